"""Observability: a request id on every request and log line, structured JSON logs, and
Prometheus metrics (requests, turn and upstream latency, turns by outcome, tokens, DB pool).

Metrics live in prometheus_client's default registry. With several worker processes
(`convstore serve --workers N`), PROMETHEUS_MULTIPROC_DIR is set and /metrics adds up the
values of every worker.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

import msgspec
from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import (
    LifeSpanReceive,
    LifeSpanScope,
    LifeSpanSend,
    Message,
    Receive,
    Scope,
    Send,
)
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
REQUEST_ID_HEADER = "x-request-id"
# An incoming request id is kept only if it is short and plain, so it is safe in logs.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

log = logging.getLogger("convstore.access")

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)

REQUESTS = Counter(
    "convstore_requests_total",
    "HTTP requests answered, by route and status",
    ["method", "route", "status"],
)
REQUEST_SECONDS = Histogram(
    "convstore_request_seconds",
    "Time to answer an HTTP request (streams: to their end)",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
TURNS = Counter("convstore_turns_total", "Turns finished, by outcome", ["outcome"])
TURN_SECONDS = Histogram(
    "convstore_turn_seconds",
    "Whole turn: both transactions and the upstream call",
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_SECONDS = Histogram(
    "convstore_upstream_seconds",
    "The upstream call of a turn, retries included",
    buckets=LATENCY_BUCKETS,
)
TOKENS = Counter("convstore_tokens_total", "Tokens reported by the upstream", ["model", "kind"])
DELETED = Counter(
    "convstore_deleted_total",
    "Conversations deleted, and their messages and turns, by who deleted them",
    ["by", "what"],
)
DB_POOL_IN_USE = Gauge(
    "convstore_db_pool_connections_in_use",
    "Database connections checked out of the pool",
    multiprocess_mode="livesum",
)


def observe_turn(
    outcome: str,
    *,
    seconds: float,
    upstream_seconds: float | None,
    model: str,
    usage: dict[str, Any] | None,
) -> None:
    """Count one finished turn (``completed`` or an error code) and its tokens."""
    TURNS.labels(outcome).inc()
    TURN_SECONDS.observe(seconds)
    if upstream_seconds is not None:
        UPSTREAM_SECONDS.observe(upstream_seconds)
    if not usage:
        return
    details = usage.get("completion_tokens_details") or {}
    for kind, value in (
        ("prompt", usage.get("prompt_tokens")),
        ("completion", usage.get("completion_tokens")),
        ("reasoning", details.get("reasoning_tokens") if isinstance(details, dict) else None),
    ):
        if isinstance(value, int) and value > 0:
            TOKENS.labels(model, kind).inc(value)


def observe_deletions(by: str, receipts: Sequence[Any]) -> None:
    """Count deleted conversations and what they held (``by``: tenant, admin, retention)."""
    if not receipts:
        return
    DELETED.labels(by, "conversations").inc(len(receipts))
    DELETED.labels(by, "messages").inc(sum(r.message_count for r in receipts))
    DELETED.labels(by, "turns").inc(sum(r.turn_count for r in receipts))


def metrics_text(pool_in_use: int) -> tuple[bytes, str]:
    """The Prometheus exposition of every metric (of every worker, when there are several)."""
    DB_POOL_IN_USE.set(pool_in_use)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, and extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id:
            entry["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry).decode()


JsonFormatter.converter = time.gmtime


def configure_logging(level: str) -> None:
    """Send the service's logs to standard error as JSON lines (once per process)."""
    logger = logging.getLogger("convstore")
    logger.setLevel(level)
    if not any(getattr(h, "convstore", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler.convstore = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    # httpx logs every request at INFO: the service's own access and turn logs say more.
    for library in ("httpx", "httpcore"):
        logging.getLogger(library).setLevel(logging.WARNING)


class ObservedLitestar(Litestar):
    """Litestar, with every HTTP request (404s and 405s included) given a request id (also
    returned as ``X-Request-ID``), counted, timed and logged as one JSON line."""

    async def __call__(
        self,
        scope: Scope | LifeSpanScope,
        receive: Receive | LifeSpanReceive,
        send: Send | LifeSpanSend,
    ) -> None:
        if scope["type"] != ScopeType.HTTP:
            await super().__call__(scope, receive, send)
            return
        await self._observed(scope, receive, send)  # type: ignore[arg-type]

    async def _observed(self, scope: Scope, receive: Receive, send: Send) -> None:
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _SAFE_ID.match(incoming) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers") or [])
                headers.append((b"x-request-id", request_id.encode()))
                if scope.get("method") == "OPTIONS" and status == 204:
                    headers = self._with_full_allow(scope, headers)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await super().__call__(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("path_template") or "(no route)"
            method = scope.get("method", "")
            if method not in KNOWN_METHODS:
                method = "other"  # a label's values must stay few, whatever clients send
            REQUESTS.labels(method, route, str(status)).inc()
            REQUEST_SECONDS.labels(method, route).observe(seconds)
            log.info(
                "%s %s %s",
                method,
                scope.get("path", ""),
                status,
                extra={
                    "fields": {
                        "method": method,
                        "path": scope.get("path", ""),
                        "route": route,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 2),
                    }
                },
            )
            REQUEST_ID.reset(token)

    def _with_full_allow(
        self, scope: Scope, headers: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        # Litestar 2 answers OPTIONS with only some of a path's methods when several handlers
        # share the path (litestar#4169, fixed in Litestar 3); list them all.
        template = scope.get("path_template")
        methods = sorted(
            {
                m
                for r in self.routes
                if getattr(r, "path_format", None) == template
                for m in getattr(r, "methods", ())
            }
        )
        if not methods:
            return headers
        kept = [(k, v) for k, v in headers if k.lower() != b"allow"]
        return [*kept, (b"allow", ", ".join(methods).encode())]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return bytes(value).decode("latin-1")
    return None
