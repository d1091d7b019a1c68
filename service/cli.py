"""The ``convstore`` command: serve, migrate, keys, fake-upstream."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from sqlalchemy.engine import make_url

from service.settings import Settings, SettingsError
from service.store import Store, make_engine

_T = TypeVar("_T")


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"convstore: bad setting: {exc}")


def _where(settings: Settings) -> str:
    return make_url(settings.database_url).render_as_string(hide_password=True)


def _migrate(settings: Settings) -> None:
    from service.migrate import upgrade

    try:
        upgrade(settings.database_url)
    except Exception as exc:
        sys.exit(f"convstore: could not migrate {_where(settings)}: {exc}")


def _with_store(settings: Settings, work: Callable[[Store], Awaitable[_T]]) -> _T:
    async def run() -> _T:
        engine = make_engine(settings.database_url, pool_size=1)
        try:
            return await work(Store(engine))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    settings = _settings()
    _migrate(settings)
    print(f"convstore: database {_where(settings)} is at the newest schema", flush=True)
    print(f"convstore: upstream {settings.upstream_url}"
          + ("" if settings.xai_api_key else " (XAI_API_KEY is not set)"), flush=True)
    print(f"convstore: listening on http://{args.host}:{args.port} "
          f"(API docs at http://{args.host}:{args.port}/schema)", flush=True)
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:  # pragma: no cover - platforms without uvloop
        loop = "asyncio"
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop=loop,
        access_log=False,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=30,
    )


def cmd_migrate(args: argparse.Namespace) -> None:
    settings = _settings()
    _migrate(settings)
    print(f"convstore: database {_where(settings)} is at the newest schema")


def cmd_keys_create(args: argparse.Namespace) -> None:
    settings = _settings()
    _migrate(settings)
    tenant = args.tenant.strip()
    if not tenant or len(tenant) > 200:
        sys.exit("convstore: --tenant must be 1 to 200 characters")
    record, key = _with_store(settings, lambda s: s.create_key(tenant, is_admin=args.admin))
    kind = "admin key" if args.admin else "key"
    print(f"Created {kind} {record.id} for tenant {tenant!r}. It is shown only once:")
    print(key)


def cmd_keys_list(args: argparse.Namespace) -> None:
    settings = _settings()
    _migrate(settings)
    keys = _with_store(settings, lambda s: s.list_keys())
    print(f"{'id':36}  {'prefix':10}  {'tenant':20}  {'admin':5}  {'created':20}  revoked")
    for k in keys:
        print(
            f"{k.id!s:36}  {k.key_prefix:10}  {k.tenant[:20]:20}  {'yes' if k.is_admin else 'no':5}"
            f"  {k.created_at:%Y-%m-%d %H:%M:%S}   "
            f"{k.revoked_at.strftime('%Y-%m-%d %H:%M:%S') if k.revoked_at else '-'}"
        )


def cmd_keys_revoke(args: argparse.Namespace) -> None:
    settings = _settings()
    try:
        key_id = uuid.UUID(args.key_id)
    except ValueError:
        sys.exit(f"convstore: {args.key_id!r} is not a key id (see `convstore keys list`)")
    _migrate(settings)
    if not _with_store(settings, lambda s: s.revoke_key(key_id)):
        sys.exit(f"convstore: no active key has id {key_id}")
    print(f"Revoked key {key_id}.")


def cmd_fake_upstream(args: argparse.Namespace) -> None:
    from service import fake_upstream

    fake_upstream.main(["--host", args.host, "--port", str(args.port)])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convstore",
        description="A stateful conversation store in front of xAI's chat-completions API.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="migrate the database to the newest schema, then serve")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="bring the database to the newest schema")
    migrate.set_defaults(func=cmd_migrate)

    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="create a key; prints it as the last line")
    create.add_argument("--tenant", required=True, help="whose conversations the key may see")
    create.add_argument("--admin", action="store_true", help="may also use /admin")
    create.set_defaults(func=cmd_keys_create)
    listing = keys_sub.add_parser("list", help="list keys (never the keys themselves)")
    listing.set_defaults(func=cmd_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=cmd_keys_revoke)

    fake = sub.add_parser(
        "fake-upstream", help="serve an offline stand-in for the xAI API (demos and tests)"
    )
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=9100)
    fake.set_defaults(func=cmd_fake_upstream)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":  # pragma: no cover
    main()
