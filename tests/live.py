"""The service on a real socket, for tests: in this process (a thread), or as its own process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from litestar import Litestar

from service.fake_upstream import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent


class LiveServer:
    """The service on a real socket: uvicorn in a thread of its own, with its own event loop,
    so that concurrent requests really run concurrently and clients can really hang up."""

    def __init__(self, app: Litestar) -> None:
        self.app = app
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = ""

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.005)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextlib.asynccontextmanager
async def serve(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app`` served on a real socket."""
    with LiveServer(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            yield http


@contextlib.asynccontextmanager
async def loopback_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    **options: object,
) -> AsyncIterator[int]:
    """An asyncio server on 127.0.0.1 calling ``handle`` for each connection (``options`` go to
    ``asyncio.start_server``, ``ssl=`` for one); yields its port. On exit it stops listening and
    cancels the handlers still running."""
    handlers: set[asyncio.Task[None]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        await handle(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0, **options)  # type: ignore[arg-type]
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str


@contextlib.contextmanager
def server(database_url: str, upstream: FakeUpstream, **env: str) -> Iterator[Server]:
    """`convstore serve` as its own process."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CONVSTORE_")}
    environment.update(
        PYTHONPATH=str(ROOT),
        CONVSTORE_DATABASE_URL=database_url,
        CONVSTORE_UPSTREAM_URL=upstream.base_url,
        XAI_API_KEY="test-key",
        CONVSTORE_LOG_LEVEL="WARNING",
        CONVSTORE_UPSTREAM_RETRY_DEADLINE="5",
        CONVSTORE_TURN_RATE_LIMIT="0",
        **env,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.communicate(timeout=5)[0] if process.poll() is not None else ""
                pytest.fail(f"the server did not start: {output}")
            time.sleep(0.1)
        yield Server(process, url)
    finally:
        if process.poll() is None:
            process.terminate()
        output = process.communicate(timeout=30)[0]
        assert "database is locked" not in output
        assert "Traceback" not in output, output
