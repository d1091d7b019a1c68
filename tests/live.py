"""The service on a real socket, for tests: in this process (a thread), or as its own process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from litestar import Litestar

from service.fake_upstream import FakeUpstream, expected_reply
from service.store import Store, make_engine

ROOT = Path(__file__).resolve().parent.parent


class LiveServer:
    """The service on a real socket: uvicorn in a thread of its own, with its own event loop,
    so that concurrent requests really run concurrently and clients can really hang up."""

    def __init__(self, app: Litestar, **options: Any) -> None:
        self.app = app
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=5,
            **options,
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


class TcpRelay:
    """A TCP relay in front of a server (PostgreSQL, here) on a thread and event loop of its own
    (the test's loop blocks while a test server stops): ``down()`` closes every relayed
    connection and refuses new ones, as a stopped server would; ``up()`` serves again."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self.listener: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def up(self) -> None:
        asyncio.run_coroutine_threadsafe(self._up(), self.loop).result(timeout=10)

    def down(self) -> None:
        asyncio.run_coroutine_threadsafe(self._down(), self.loop).result(timeout=10)

    def close(self) -> None:
        self.down()
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def _up(self) -> None:
        self.listener = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def _down(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()
            self.writers.discard(writer)


async def stored_messages(
    client: httpx.AsyncClient, headers: dict[str, str], cid: str, base: str = ""
) -> list[dict[str, Any]]:
    """Every message of the conversation's active path, page after page."""
    messages: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 100}
        if cursor:
            params["cursor"] = cursor
        page = (
            await client.get(
                f"{base}/v1/conversations/{cid}/messages", params=params, headers=headers
            )
        ).json()
        messages += page["data"]
        if not page["has_more"]:
            return messages
        cursor = page["next_cursor"]


async def check_conversation(
    client: httpx.AsyncClient, base: str, headers: dict[str, str], cid: str
) -> int:
    """Messages 1..n without gaps, strictly user/assistant, each reply answering exactly the
    history before it. Returns the number of replies."""
    messages = await stored_messages(client, headers, cid, base)
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
    for index in range(1, len(messages), 2):
        history = [{"role": m["role"], "content": m["content"]} for m in messages[:index]]
        assert messages[index]["content"] == expected_reply(history), index
    return len(messages) // 2


async def turn_until_taken(
    client: httpx.AsyncClient,
    bases: list[str],
    headers: dict[str, str],
    cid: str,
    content: str,
    answers: Counter[int],
    *,
    attempts: int = 25,
) -> None:
    """Ask for a turn until one is taken, waiting a little after each 409 (another turn of
    the conversation running), over each of ``bases`` in turn; counts the answers."""
    for attempt in range(attempts):
        response = await client.post(
            f"{bases[attempt % len(bases)]}/v1/conversations/{cid}/turns",
            json={"messages": [{"role": "user", "content": content}]},
            headers=headers,
        )
        answers[response.status_code] += 1
        if response.status_code == 201:
            return
        assert response.json()["code"] == "turn_in_progress", response.text
        await asyncio.sleep(random.uniform(0.01, 0.1))


async def new_tenant_key(
    database_url: str, *, admin: bool = False, transaction_pooler: bool = False
) -> dict[str, str]:
    """Headers of a new key of a new tenant of its own, made in the given database."""
    store = Store(make_engine(database_url, pool_size=1, transaction_pooler=transaction_pooler))
    try:
        _, key = await store.create_key(f"t-{uuid.uuid4().hex[:8]}", is_admin=admin)
    finally:
        await store.engine.dispose()
    return {"Authorization": f"Bearer {key}"}
