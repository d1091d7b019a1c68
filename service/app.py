"""The Litestar application: ``create_app()`` wires settings, store, upstream client and routes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from httpx_aiohttp import HttpxAiohttpClient
from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig
from sqlalchemy.ext.asyncio import AsyncEngine

from service.auth import KeyCache, authenticate, provide_admin, provide_principal
from service.bodies import StrictBody
from service.errors import EXCEPTION_HANDLERS
from service.events import KEEPALIVE_SECONDS
from service.imports import Importer
from service.observability import ObservedLitestar, configure_logging
from service.openai.routes import openai_router
from service.openapi import schema_router
from service.ratelimit import TurnRateLimit
from service.retention import SWEEP_EVERY, RetentionSweeper
from service.routes.admin import AdminController
from service.routes.audit import AccountabilityController
from service.routes.conversations import ConversationController
from service.routes.health import health, metrics, ready
from service.routes.transcripts import TranscriptController
from service.routes.turns import TurnController
from service.settings import Settings, check_upstream_proxy
from service.store import Store, make_engine
from service.turns import TurnRunner
from service.upstream import UpstreamClient
from service.upstream_responses import upstream_api
from service.web import TEMPLATES, AdminPages

__version__ = "0.1.0"
MAX_BODY_BYTES = 8 * 1024 * 1024


def make_http_client(settings: Settings) -> httpx.AsyncClient:
    """The one pooled client for the upstream: httpx's API, and its reading of the proxy and CA
    variables (HTTPS_PROXY, NO_PROXY, SSL_CERT_FILE…), over aiohttp's connections.

    httpx-aiohttp gives aiohttp's connector ``max_connections`` as its limit (it has no cap of
    its own on idle connections, so ``max_keepalive_connections`` is the same number) and
    ``keepalive_expiry`` as its keep-alive timeout. Per request, the connect timeout bounds
    each connection attempt, the read timeout each wait for data, and the pool timeout the
    whole connect phase: waiting for a free connection, DNS, TCP, TLS and a proxy's tunnel.
    Raises ``SettingsError`` for a proxy it cannot use (SOCKS).
    """
    check_upstream_proxy(settings.upstream_url, os.environ)
    connections = settings.upstream_max_connections
    connect = settings.upstream_connect_timeout
    return HttpxAiohttpClient(
        timeout=httpx.Timeout(settings.upstream_timeout, connect=connect, pool=connect),
        limits=httpx.Limits(
            max_connections=connections,
            max_keepalive_connections=connections,
            keepalive_expiry=60,
        ),
    )


def create_app(
    settings: Settings | None = None,
    *,
    http_client: httpx.AsyncClient | None = None,
    engine: AsyncEngine | None = None,
    retry_backoff: float = 0.5,
    keepalive: float = KEEPALIVE_SECONDS,
    sweep_every: float = SWEEP_EVERY,
) -> Litestar:
    """Build the service. Collaborators passed in are used as given and not closed by the app;
    those it creates itself it disposes of on shutdown. Every instance runs a retention
    sweeper (every ``sweep_every`` seconds)."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        own_engine = engine is None
        own_client = http_client is None
        db = engine or make_engine(
            settings.database_url,
            pool_size=settings.db_pool_size,
            transaction_pooler=settings.db_transaction_pooler,
        )
        read_db = None
        if settings.read_database_url:
            read_db = make_engine(
                settings.read_database_url,
                pool_size=settings.db_pool_size,
                transaction_pooler=settings.db_transaction_pooler,
            )
        client = http_client or make_http_client(settings)
        store = Store(db, read_db)
        upstream = UpstreamClient(
            client,
            base_url=settings.upstream_url,
            api_key=settings.xai_api_key,
            timeout=settings.upstream_timeout,
            max_retries=settings.upstream_max_retries,
            retry_deadline=settings.upstream_retry_deadline,
            backoff=retry_backoff,
            max_reply_chars=settings.max_reply_chars,
            api=upstream_api(settings.upstream_api),
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
            windows=settings.model_windows,
            keep_requests=settings.keep_requests,
            compaction_model=settings.compaction_model,
        )
        app.state.turns = turns
        app.state.importer = Importer(store, default_model=settings.default_model)
        sweeper = RetentionSweeper(store, retention_days=settings.retention_days, every=sweep_every)
        app.state.sweeper = sweeper
        turns.start()
        sweeper.start()
        try:
            yield
        finally:
            await sweeper.stop()
            await turns.stop()
            await store.close()
            if own_client:
                await client.aclose()
            if own_engine:
                await db.dispose()
            if read_db is not None:
                await read_db.dispose()

    configure_logging(settings.log_level)
    openapi_router, render_plugins = schema_router()
    return ObservedLitestar(
        route_handlers=[
            ConversationController,
            TurnController,
            TranscriptController,
            AccountabilityController,
            AdminController,
            AdminPages,
            openai_router(),
            health,
            ready,
            metrics,
        ],
        guards=[authenticate],
        dependencies={
            "principal": Provide(provide_principal),
            "admin": Provide(provide_admin),
        },
        lifespan=[lifespan],
        # Every route's body is decoded strictly into the type its handler declares.
        dto=StrictBody,
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
