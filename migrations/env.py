"""Alembic environment: async engines, the service's metadata, and a connection passed in.

`convstore migrate` (and `serve`) pass the URL in ``config.attributes["database_url"]``; a
plain ``alembic`` command reads CONVSTORE_DATABASE_URL like the service does.
"""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection

from service.settings import Settings
from service.store import make_engine
from service.tables import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def database_url() -> tuple[str, bool]:
    """The URL, and whether it leads to a pooler in transaction mode."""
    url = config.attributes.get("database_url")
    if url:
        return str(url), bool(config.attributes.get("transaction_pooler"))
    settings = Settings.from_env()
    return settings.database_url, settings.db_transaction_pooler


def render_item(kind: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    # Migrations stay free of service imports: the UTC wrapper is a plain timestamp in SQL.
    if kind == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    # Text-search objects (FTS5 tables and their shadow tables, expression indexes) are made
    # by hand in a migration; Alembic cannot describe them, so it leaves them alone.
    return not (name or "").startswith("search_")


def configure(connection: Connection | None = None, **extra: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_name=include_name,
        render_item=render_item,
        render_as_batch=True,
        compare_type=True,
        **extra,
    )


def run_migrations_offline() -> None:
    configure(url=database_url()[0], literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    url, transaction_pooler = database_url()
    engine = make_engine(url, pool_size=1, transaction_pooler=transaction_pooler)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    connection = config.attributes.get("connection")
    if connection is None:
        asyncio.run(run_async_migrations())
    else:
        do_run_migrations(connection)
