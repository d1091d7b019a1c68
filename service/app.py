"""The Litestar application: ``create_app()`` wires settings, store, upstream client and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig
from sqlalchemy.ext.asyncio import AsyncEngine

from service.auth import KeyCache, provide_admin, provide_principal
from service.errors import EXCEPTION_HANDLERS
from service.events import KEEPALIVE_SECONDS
from service.netio import UpstreamTransport
from service.observability import ObservedLitestar, configure_logging
from service.openapi import schema_router
from service.ratelimit import TurnRateLimit
from service.routes.admin import AdminController
from service.routes.conversations import ConversationController
from service.routes.health import health, metrics, ready
from service.routes.transcripts import TranscriptController
from service.routes.turns import TurnController
from service.settings import Settings
from service.store import Store, make_engine
from service.turns import TurnRunner
from service.upstream import UpstreamClient
from service.web import TEMPLATES, AdminPages

__version__ = "0.1.0"
MAX_BODY_BYTES = 8 * 1024 * 1024


def make_http_client(
    settings: Settings, *, max_connections: int = 200
) -> tuple[httpx.AsyncClient, UpstreamTransport]:
    """The one pooled client for the upstream (a short connect timeout, a long read timeout),
    and the transport under it."""
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=60,
    )
    transport = UpstreamTransport(limits=limits)
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(settings.upstream_timeout, connect=settings.upstream_connect_timeout),
        transport=transport,
    )
    return client, transport


def create_app(
    settings: Settings | None = None,
    *,
    http_client: httpx.AsyncClient | None = None,
    engine: AsyncEngine | None = None,
    retry_backoff: float = 0.5,
    keepalive: float = KEEPALIVE_SECONDS,
) -> Litestar:
    """Build the service. Collaborators passed in are used as given and not closed by the app;
    those it creates itself it disposes of on shutdown."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        own_engine = engine is None
        own_client = http_client is None
        db = engine or make_engine(settings.database_url, pool_size=settings.db_pool_size)
        client, direct = (http_client, None) if http_client else make_http_client(settings)
        store = Store(db)
        upstream = UpstreamClient(
            client,
            base_url=settings.upstream_url,
            api_key=settings.xai_api_key,
            timeout=settings.upstream_timeout,
            max_retries=settings.upstream_max_retries,
            retry_deadline=settings.upstream_retry_deadline,
            backoff=retry_backoff,
            direct=direct,
        )
        app.state.settings = settings
        app.state.store = store
        app.state.key_cache = KeyCache(settings.key_cache_ttl)
        turns = TurnRunner(
            store,
            upstream,
            lease=settings.turn_lease,
            keepalive=keepalive,
            rate_limit=TurnRateLimit(),
        )
        app.state.turns = turns
        turns.start()
        try:
            yield
        finally:
            await turns.stop()
            await store.close()
            if own_client:
                await client.aclose()
            if own_engine:
                await db.dispose()

    configure_logging(settings.log_level)
    openapi_router, render_plugins = schema_router()
    return ObservedLitestar(
        route_handlers=[
            ConversationController,
            TurnController,
            TranscriptController,
            AdminController,
            AdminPages,
            health,
            ready,
            metrics,
        ],
        dependencies={
            "principal": Provide(provide_principal),
            "admin": Provide(provide_admin),
        },
        lifespan=[lifespan],
        # The service logs its own JSON lines (configure_logging); Litestar's default config
        # would add a root handler that prints every library's INFO lines as plain text.
        logging_config=None,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        request_max_body_size=MAX_BODY_BYTES,
        template_config=TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine),
        openapi_config=OpenAPIConfig(
            title="convstore",
            version=__version__,
            description="A stateful conversation store in front of xAI's chat-completions API.",
            path="/schema",
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(type="http", scheme="bearer", description="API key")
                }
            ),
            security=[{"bearer": []}],
            render_plugins=render_plugins,
            openapi_router=openapi_router,
        ),
    )
