"""The ``convstore`` command: serve, migrate, keys, fake-upstream."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from sqlalchemy.engine import make_url

from service import importers, transcripts
from service.errors import Conflict, ServiceError
from service.imports import Importer
from service.settings import Settings, SettingsError, check_upstream_proxy
from service.store import ConversationFilter, KeyRecord, Store, make_engine

_T = TypeVar("_T")


def _settings(*, calls_upstream: bool = False) -> Settings:
    try:
        settings = Settings.from_env()
        if calls_upstream:
            check_upstream_proxy(settings.upstream_url, os.environ)
    except SettingsError as exc:
        sys.exit(f"convstore: bad setting: {exc}")
    return settings


def _where(settings: Settings) -> str:
    """The database, as a user would find it: a SQLite file's absolute path, or the URL."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        return f"SQLite file {Path(url.database).expanduser().resolve()}"
    return url.render_as_string(hide_password=True)


def _announce_database(settings: Settings) -> None:
    """Say on standard error which database a command uses (keys and data go to the database
    of CONVSTORE_DATABASE_URL, which by default is a file in the current directory), and when
    it is a SQLite file that did not exist yet."""
    url = make_url(settings.database_url)
    new = url.get_backend_name() == "sqlite" and not Path(url.database or "").exists()
    print(f"convstore: database {_where(settings)}" + (" (new)" if new else ""), file=sys.stderr)


def _migrate(settings: Settings) -> None:
    from service.migrate import upgrade

    try:
        upgrade(settings.database_url)
    except Exception as exc:
        sys.exit(f"convstore: could not migrate {_where(settings)}: {exc}")


def _with_store(settings: Settings, work: Callable[[Store], Awaitable[_T]]) -> _T:
    async def run() -> _T:
        store = Store(make_engine(settings.database_url, pool_size=1))
        try:
            return await work(store)
        finally:
            await store.close()
            await store.engine.dispose()

    return asyncio.run(run())


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from service import server

    settings = _settings(calls_upstream=True)
    _migrate(settings)
    print(f"convstore: database {_where(settings)} is at the newest schema", flush=True)
    print(
        f"convstore: upstream {settings.upstream_url}"
        + ("" if settings.upstream_api == "chat_completions" else f" ({settings.upstream_api})")
        + ("" if settings.xai_api_key else " (XAI_API_KEY is not set)"),
        flush=True,
    )
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker writes its metrics here, so that /metrics adds up every worker's.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="convstore-metrics-")
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:  # pragma: no cover - platforms without uvloop
        loop = "asyncio"
    config = uvicorn.Config(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop=loop,
        access_log=False,
        log_level=settings.log_level.lower(),
        **server.server_options(),
    )

    def listening(port: int) -> None:
        where = f"http://{args.host}:{port}"
        print(f"convstore: listening on {where} (API docs at {where}/schema)", flush=True)

    server.run(config, listening)


def cmd_migrate(args: argparse.Namespace) -> None:
    settings = _settings()
    _migrate(settings)
    print(f"convstore: database {_where(settings)} is at the newest schema")


def _keys_database() -> Settings:
    settings = _settings()
    _announce_database(settings)
    _migrate(settings)
    return settings


def cmd_keys_create(args: argparse.Namespace) -> None:
    tenant = _tenant(args.tenant)
    settings = _keys_database()
    limit = args.turns_per_minute or None
    record, key = _with_store(
        settings, lambda s: s.create_key(tenant, is_admin=args.admin, turns_per_minute=limit)
    )
    kind = "admin key" if args.admin else "key"
    limited = f", at most {limit} turns a minute" if limit else ""
    print(f"Created {kind} {record.id} for tenant {tenant!r}{limited}. It is shown only once:")
    print(key)


def _tenant(given: str) -> str:
    tenant = given.strip()
    if not tenant or len(tenant) > 200 or not tenant.isprintable():
        sys.exit("convstore: --tenant must be 1 to 200 printable characters")
    return tenant


def cmd_keys_list(args: argparse.Namespace) -> None:
    settings = _keys_database()
    keys = _with_store(settings, lambda s: s.list_keys())
    print(
        f"{'id':36}  {'prefix':10}  {'tenant':20}  {'admin':5}  {'turns/min':9}  "
        f"{'created':19}  revoked"
    )
    for k in keys:
        print(
            f"{k.id!s:36}  {k.key_prefix:10}  {k.tenant[:20]:20}  {'yes' if k.is_admin else 'no':5}"
            f"  {k.turns_per_minute or '-'!s:9}  {k.created_at:%Y-%m-%d %H:%M:%S}  "
            f"{k.revoked_at.strftime('%Y-%m-%d %H:%M:%S') if k.revoked_at else '-'}"
        )


def _one_key(settings: Settings, id_or_prefix: str) -> KeyRecord:
    """The key named by its id or its prefix (both as ``keys list`` shows them)."""
    found = _with_store(settings, lambda s: s.find_keys(id_or_prefix.strip()))
    if not found:
        sys.exit(
            f"convstore: no key has the id or prefix {id_or_prefix!r} (see `convstore keys list`)"
        )
    if len(found) > 1:
        sys.exit(
            f"convstore: {len(found)} keys have the prefix {id_or_prefix!r}; give the key's id"
        )
    return found[0]


def cmd_keys_revoke(args: argparse.Namespace) -> None:
    settings = _keys_database()
    key = _one_key(settings, args.key)
    if not _with_store(settings, lambda s: s.revoke_key(key.id)):
        sys.exit(f"convstore: key {key.id} was already revoked")
    print(f"Revoked key {key.id} ({key.key_prefix}…, tenant {key.tenant!r}).")


def cmd_keys_limit(args: argparse.Namespace) -> None:
    settings = _keys_database()
    key = _one_key(settings, args.key)
    limit = args.turns_per_minute or None
    _with_store(settings, lambda s: s.limit_key(key.id, limit))
    what = f"at most {limit} turns a minute" if limit else "no limit of turns"
    print(f"Key {key.id} ({key.key_prefix}…) now has {what} (within the key cache's seconds).")


class Progress:
    """A one-line progress bar on a terminal; silent when standard error is not one."""

    def __init__(self, total: int, unit: str) -> None:
        self.total = max(total, 1)
        self.unit = unit
        self.done = 0
        self.enabled = sys.stderr.isatty()
        self._last = 0.0

    def advance(self, amount: int = 1) -> None:
        self.done += amount
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            share = min(1.0, self.done / self.total)
            bar = "#" * int(share * 30)
            sys.stderr.write(f"\r[{bar:<30}] {share:4.0%} {self.done}/{self.total} {self.unit}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def cmd_export(args: argparse.Namespace) -> None:
    settings = _settings()
    _migrate(settings)
    filters = ConversationFilter(tenant=args.tenant)

    async def work(store: Store) -> tuple[int, int]:
        progress = Progress(await store.count_conversations(filters), "conversations")
        conversations = messages = 0
        out = open(args.out, "wb") if args.out else sys.stdout.buffer  # noqa: SIM115
        try:
            async for rows in store.export_many(filters):
                out.write(transcripts.encode(transcripts.build(rows)) + b"\n")
                conversations += 1
                messages += len(rows.messages)
                progress.advance()
        finally:
            progress.close()
            if args.out:
                out.close()
            else:
                out.flush()
        return conversations, messages

    conversations, messages = _with_store(settings, work)
    where = args.out or "standard output"
    print(
        f"Exported {_count(conversations, 'conversation')} ({_count(messages, 'message')}) "
        f"to {where}.",
        file=sys.stderr,
    )


def cmd_import(args: argparse.Namespace) -> None:
    settings = _settings()
    tenant = _tenant(args.tenant)
    path = Path(args.file)
    if not path.is_file():
        sys.exit(f"convstore: no file {args.file!r}")
    _migrate(settings)

    async def work(store: Store) -> ImportCounts:
        importer = Importer(store, default_model=settings.default_model)
        if args.source == "convstore":
            return await _import_ndjson(importer, path, tenant)
        return await _import_other(importer, path, tenant, args.source)

    counts = _with_store(settings, work)
    for note in counts.notes:
        print(f"  {note}", file=sys.stderr)
    already = counts.already
    print(
        f"Imported {_count(counts.imported, 'conversation')} for tenant {tenant!r}; "
        f"{already} {'was' if already == 1 else 'were'} already imported, "
        f"{counts.failed} failed.",
        file=sys.stderr,
    )
    if counts.failed:
        sys.exit(1)


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


@dataclass
class ImportCounts:
    imported: int = 0
    already: int = 0
    failed: int = 0
    notes: list[str] = field(default_factory=list)

    def refused(self, where: str, error: ServiceError) -> None:
        """A failure, with every problem the error lists (the first 20, then how many more)."""
        self.failed += 1
        problems = error.extra.get("errors")
        if not problems:
            self.notes.append(f"{where}: {error.detail}")
            return
        self.problems(where, problems, error.extra.get("error_count", len(problems)))

    def problems(self, where: str, problems: Sequence[Any], count: int) -> None:
        self.notes.append(f"{where}: {_count(count, 'problem')}:")
        for problem in problems:
            self.notes.append(f"    {problem['path']}: {problem['message']}")
        if count > len(problems):
            self.notes.append(f"    … and {count - len(problems):,} more")


async def _import_ndjson(importer: Importer, path: Path, tenant: str) -> ImportCounts:
    counts = ImportCounts()
    progress = Progress(path.stat().st_size, "bytes")
    try:
        with path.open("rb") as lines:
            for number, line in enumerate(lines, start=1):
                progress.advance(len(line))
                if not line.strip():
                    continue
                try:
                    await importer.transcript(tenant, line)
                except Conflict:
                    counts.already += 1
                except ServiceError as exc:
                    counts.refused(f"line {number}", exc)
                else:
                    counts.imported += 1
    finally:
        progress.close()
    return counts


async def _import_other(importer: Importer, path: Path, tenant: str, source: str) -> ImportCounts:
    counts = ImportCounts()
    try:
        summary = await importer.export(tenant, source, path.read_bytes())
    except ServiceError as exc:
        counts.refused(str(path), exc)
        return counts
    counts.notes += summary.skipped
    for refused in summary.refused:
        counts.failed += 1
        name = f"conversation {refused.title!r} ({refused.source_id})"
        counts.problems(
            f"{name} refused", msgspec.to_builtins(refused.problems), refused.problem_count
        )
    counts.imported = len(summary.data)
    counts.already = len(summary.already_imported)
    return counts


def cmd_fake_upstream(args: argparse.Namespace) -> None:
    from service import fake_upstream

    fake_upstream.main(["--host", args.host, "--port", str(args.port)])


def cmd_openapi(args: argparse.Namespace) -> None:
    from service.app import create_app
    from service.openapi import complete

    app = create_app(Settings())
    document = complete(app.openapi_schema.to_schema())
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")


def _whole(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"{value} is out of range ({bounds})")
        return value

    return parse


_port, _positive, _not_negative = _whole(0, 65535), _whole(1), _whole(0)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convstore",
        description="A stateful conversation store in front of xAI's chat-completions API.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="migrate the database to the newest schema, then serve")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000, help="0 to 65535 (0: any free port)")
    serve.add_argument("--workers", type=_positive, default=1, help="server processes (default 1)")
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="bring the database to the newest schema")
    migrate.set_defaults(func=cmd_migrate)

    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="create a key; prints it as the last line")
    create.add_argument("--tenant", required=True, help="whose conversations the key may see")
    create.add_argument("--admin", action="store_true", help="may also use /admin")
    create.add_argument(
        "--turns-per-minute",
        type=_not_negative,
        default=0,
        help="at most this many turns a minute, in each server process (default: no limit)",
    )
    create.set_defaults(func=cmd_keys_create)
    listing = keys_sub.add_parser("list", help="list keys (never the keys themselves)")
    listing.set_defaults(func=cmd_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id or prefix")
    revoke.add_argument("key", help="the key's id or prefix, as `keys list` shows them")
    revoke.set_defaults(func=cmd_keys_revoke)
    limit = keys_sub.add_parser("limit", help="set or lift a key's limit of turns a minute")
    limit.add_argument("key", help="the key's id or prefix, as `keys list` shows them")
    limit.add_argument(
        "--turns-per-minute", type=_not_negative, required=True, help="0 for no limit"
    )
    limit.set_defaults(func=cmd_keys_limit)

    export = sub.add_parser("export", help="write every conversation as NDJSON transcripts")
    export.add_argument("--tenant", help="only this tenant's conversations (default: all)")
    export.add_argument("--out", help="file to write (default: standard output)")
    export.set_defaults(func=cmd_export)

    imp = sub.add_parser(
        "import", help="read transcripts (or another tool's export) into new conversations"
    )
    imp.add_argument("file", help="an NDJSON file of transcripts, or the other tool's export")
    imp.add_argument("--tenant", required=True, help="the tenant that will own them")
    imp.add_argument(
        "--from",
        dest="source",
        choices=("convstore", *importers.SOURCES),
        default="convstore",
        help="what made the file (default: convstore NDJSON transcripts)",
    )
    imp.set_defaults(func=cmd_import)

    fake = sub.add_parser(
        "fake-upstream", help="serve an offline stand-in for the xAI API (demos and tests)"
    )
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=9100)
    fake.set_defaults(func=cmd_fake_upstream)

    openapi = sub.add_parser(
        "openapi", help="write the OpenAPI document the service serves at /schema/openapi.json"
    )
    openapi.add_argument("--output", "-o", default="-", help="a file (default: standard output)")
    openapi.set_defaults(func=cmd_openapi)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":  # pragma: no cover
    main()
