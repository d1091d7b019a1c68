"""Liveness and readiness, without a key."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State

from service.errors import PROBLEM_JSON
from service.observability import metrics_text


@get("/health", summary="The process is alive", tags=["operations"])
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/metrics", summary="Prometheus metrics", tags=["operations"], include_in_schema=True)
async def metrics(state: State) -> Response[bytes]:
    """Requests by route and status, turn and upstream latency, turns by outcome, tokens by
    model, database connections in use."""
    body, content_type = metrics_text(state.store.connections_in_use())
    return Response(body, media_type=content_type)


@get("/ready", summary="The database is reachable", tags=["operations"])
async def ready(state: State) -> Response[dict[str, object]]:
    try:
        await state.store.ping()
    except Exception as exc:  # any failure to reach the database means not ready
        return Response(
            {
                "type": "about:blank",
                "title": "Service Unavailable",
                "status": 503,
                "detail": f"The database is not reachable: {type(exc).__name__}",
                "code": "not_ready",
            },
            status_code=503,
            media_type=PROBLEM_JSON,
            headers={"retry-after": "5"},
        )
    return Response({"status": "ready"})
