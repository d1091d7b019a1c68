"""The service on a real socket, for tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator

import httpx
import uvicorn
from litestar import Litestar


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
