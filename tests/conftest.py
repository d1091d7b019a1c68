"""Fixtures: every storage test runs against a real SQLite file and a real PostgreSQL database,
both built with ``alembic upgrade head``; the upstream is the fake xAI server over a socket."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from live import serve
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from service.app import create_app
from service.fake_upstream import FakeUpstream
from service.migrate import upgrade
from service.settings import Settings
from service.store import Store, make_engine

PG_ADMIN_URL = os.environ.get(
    "CONVSTORE_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
UPSTREAM_KEY = "test-key"
# Every table a test may write to (not service_secret: the migration's key stays).
TABLES = (
    "context_summary",
    "message",
    "branch",
    "turn",
    "conversation",
    "admin_session",
    "api_key",
    "idempotency_key",
    "deletion_receipt",
    "admin_read",
)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Workers for ``-n auto``: one more than the CPUs (many tests wait on sockets, timers and
    child processes), at least 2 and at most 6, so that a large machine does not start a crowd
    of servers and databases."""
    return max(2, min(6, (os.cpu_count() or 1) + 1))


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


async def _pg_execute(url: str, statement: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


def postgres_database() -> Iterator[str]:
    """A new empty PostgreSQL database (dropped at the end), or a skip (a failure under CI)."""
    name = f"convstore_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_pg_execute(PG_ADMIN_URL, f'CREATE DATABASE "{name}"'))
    except (OSError, Exception) as exc:
        if _in_ci():
            pytest.fail(f"PostgreSQL is required under CI and is not reachable: {exc}")
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        asyncio.run(_pg_execute(PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database of each kind, shared by the session and emptied after each test."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "convstore.db"
        url = f"sqlite+aiosqlite:///{path}"
        upgrade(url)
        yield url
        return
    for url in postgres_database():
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated PostgreSQL database of its own, for what only PostgreSQL has."""
    for url in postgres_database():
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream(api_keys=[UPSTREAM_KEY])
    upstream.start()
    yield upstream
    upstream.stop()


@pytest.fixture
def upstream(fake_upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    """The fake upstream, with no faults and no recorded requests."""
    fake_upstream.clear()
    yield fake_upstream
    fake_upstream.clear()


@pytest.fixture
def settings(database_url: str, upstream: FakeUpstream) -> Settings:
    return Settings(
        database_url=database_url,
        upstream_url=upstream.base_url,
        xai_api_key=UPSTREAM_KEY,
        default_model="grok-4",
        upstream_timeout=10,
        upstream_connect_timeout=2,
        upstream_max_retries=2,
        upstream_retry_deadline=10,
        db_pool_size=5,
        key_cache_ttl=0,
    )


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A store on the test database; every table is emptied after the test."""
    engine = make_engine(database_url, pool_size=2)
    store = Store(engine)
    yield store
    await store.close()
    async with engine.begin() as conn:
        for table in TABLES:
            await conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608 - fixed names
    await engine.dispose()


@pytest.fixture
async def client(settings: Settings, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the service, served over a real socket on the test database."""
    async with serve(create_app(settings, retry_backoff=0.01)) as http:
        yield http


async def _key(store: Store, tenant: str, *, admin: bool = False) -> dict[str, str]:
    _, key = await store.create_key(tenant, is_admin=admin)
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def alice(store: Store) -> dict[str, str]:
    """Headers for a key of tenant ``alice``."""
    return await _key(store, "alice")


@pytest.fixture
async def bob(store: Store) -> dict[str, str]:
    """Headers for a key of tenant ``bob``."""
    return await _key(store, "bob")


@pytest.fixture
async def admin(store: Store) -> dict[str, str]:
    """Headers for an admin key (tenant ``ops``)."""
    return await _key(store, "ops", admin=True)


@pytest.fixture
def project_root() -> Path:
    return Path(__file__).resolve().parent.parent
