"""Shared pieces of the benchmarks: start the fake upstream and the service as real processes
on this machine's loopback, create databases, and summarise timings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get(
    "CONVSTORE_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
UPSTREAM_KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _env(root: Path = ROOT, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVSTORE_")}
    env["PYTHONPATH"] = str(root)
    env.update(extra)
    return env


@contextlib.contextmanager
def fake_upstream(workers: int = 1) -> Iterator[str]:
    """The fake xAI upstream as its own process; yields its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.fake_upstream",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--key",
            UPSTREAM_KEY,
            "--workers",
            str(workers),
            "--record",  # kept requests are decoded histories: a gigabyte at 10,000 messages
            "0",
        ],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/_fake/health")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def database(kind: str) -> Iterator[str]:
    """A fresh, empty database of ``kind`` (sqlite or postgresql); dropped afterwards."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite+aiosqlite:///{folder}/bench.db"
        return
    from sqlalchemy import make_url, text
    from sqlalchemy.ext.asyncio import create_async_engine

    name = f"convstore_bench_{os.getpid()}_{time.time_ns() % 10**8}"

    async def execute(statement: str) -> None:
        engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(text(statement))
        await engine.dispose()

    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def database_name(url: str) -> str | None:
    """The database a URL names (None for SQLite: there is no server to watch)."""
    from sqlalchemy import make_url

    parsed = make_url(url)
    return None if parsed.get_backend_name() == "sqlite" else parsed.database


@contextlib.contextmanager
def service(
    database_url: str,
    upstream_url: str,
    *,
    workers: int = 1,
    pool_size: int = 20,
    root: Path = ROOT,
    log: Path | None = None,
) -> Iterator[tuple[str, str]]:
    """`convstore serve` as its own process(es), run from the checkout at ``root`` (this one by
    default), its output appended to ``log`` if given; yields (base URL, an API key)."""
    env = _env(
        root,
        CONVSTORE_DATABASE_URL=database_url,
        CONVSTORE_UPSTREAM_URL=upstream_url,
        XAI_API_KEY=UPSTREAM_KEY,
        CONVSTORE_LOG_LEVEL="WARNING",
        CONVSTORE_DB_POOL_SIZE=str(pool_size),
        CONVSTORE_TURN_RATE_LIMIT="0",  # measure the service, not its per-tenant limit
    )
    cli = [sys.executable, "-m", "service.cli"]
    created = subprocess.run(
        [*cli, "keys", "create", "--tenant", "bench"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    key = created.stdout.strip().splitlines()[-1]
    port = free_port()
    with log.open("ab") if log else contextlib.nullcontext(subprocess.DEVNULL) as output:
        process = subprocess.Popen(
            [*cli, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
            env=env,
            cwd=root,
            stdout=output,
            stderr=output,
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}/ready")
        yield f"http://127.0.0.1:{port}", key
    finally:
        process.terminate()
        process.wait(timeout=60)


def http_client(connections: int = 100, **kwargs: Any) -> httpx.AsyncClient:
    """A client with the service's upstream HTTP stack (httpx over aiohttp, httpx-aiohttp), for
    both the direct calls and the calls through the service: a comparison of the two then
    measures the service, not two different clients. It holds up to ``connections`` at once."""
    from httpx_aiohttp import HttpxAiohttpClient

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return HttpxAiohttpClient(limits=limits, timeout=120, **kwargs)


def server_timing(header: str | None) -> dict[str, float]:
    """``{"db": 1.2, ...}`` from ``Server-Timing: db;dur=1.2, ...``."""
    found = {}
    for metric in (header or "").split(","):
        name, _, params = metric.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur":
                with contextlib.suppress(ValueError):
                    found[name] = float(value)
    return found


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values) if values else float("nan"),
        "p95": percentile(values, 0.95),
    }


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(cells[0], widths, strict=True))]
    lines.append("-|-".join("-" * w for w in widths))
    lines += [" | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells[1:]]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
