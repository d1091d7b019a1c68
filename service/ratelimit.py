"""A per-tenant limit on turns: a token bucket per tenant, in each server process.

Each process keeps its own buckets (no shared state, no extra database write per turn), so with
N processes a tenant may run up to N times the configured rate; set the rate accordingly.
"""

from __future__ import annotations

import math
import time

from service.errors import ServiceError

MAX_TENANTS = 100_000


class RateLimited(ServiceError):
    status, code = 429, "rate_limited"


class TurnRateLimit:
    """``per_minute`` turns per tenant, with bursts of up to ``burst`` (0 turns it off)."""

    def __init__(self, per_minute: float, *, burst: float | None = None) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst if burst is not None else max(1.0, per_minute / 6)
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, tenant: str) -> None:
        """Take one turn from the tenant's bucket, or raise 429 with ``Retry-After``."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        tokens, last = self._buckets.get(tenant, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            wait = math.ceil((1 - tokens) / self.rate)
            self._buckets[tenant] = (tokens, now)
            raise RateLimited(
                f"Too many turns for this tenant: at most {self.rate * 60:g} a minute.",
                headers={"retry-after": str(max(1, wait))},
            )
        if len(self._buckets) >= MAX_TENANTS and tenant not in self._buckets:
            self._buckets.clear()
        self._buckets[tenant] = (tokens - 1, now)
