"""Limits on turns a minute, set per API key (``convstore keys create --turns-per-minute N``).

A key without a limit has none. Each server process keeps its own token buckets (no shared
state, no extra database write per turn), so with N processes a key may start up to N times its
limit a minute.
"""

from __future__ import annotations

import math
import time
import uuid

from service.errors import ServiceError
from service.store import Principal

MAX_KEYS = 100_000


class RateLimited(ServiceError):
    status, code = 429, "rate_limited"


class TurnRateLimit:
    """A token bucket per limited key: ``turns_per_minute`` a minute, in bursts of up to a
    tenth of it (at least one)."""

    def __init__(self) -> None:
        self._buckets: dict[uuid.UUID, tuple[float, float]] = {}

    def check(self, caller: Principal) -> None:
        """Take one turn from the key's bucket, or raise 429 with ``Retry-After``."""
        per_minute = caller.turns_per_minute
        if not per_minute:
            return
        rate, burst = per_minute / 60.0, max(1.0, per_minute / 10)
        now = time.monotonic()
        tokens, last = self._buckets.get(caller.key_id, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens < 1:
            self._buckets[caller.key_id] = (tokens, now)
            raise RateLimited(
                f"Too many turns for this API key: at most {per_minute} a minute.",
                headers={"retry-after": str(max(1, math.ceil((1 - tokens) / rate)))},
            )
        if len(self._buckets) >= MAX_KEYS and caller.key_id not in self._buckets:
            self._buckets.clear()
        self._buckets[caller.key_id] = (tokens - 1, now)
