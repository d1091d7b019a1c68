"""The HTTP server's own limits: slow or oversized request headers, idle connections."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from live import LiveServer, server

from service.app import create_app
from service.fake_upstream import FakeUpstream
from service.server import MAX_HEADER_BYTES, HttpProtocol, server_options
from service.settings import Settings


class QuickHeaders(HttpProtocol):
    header_timeout = 0.5


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the server sent before it closed the connection, if it did within ``seconds``."""
    data = b""
    async with asyncio.timeout(seconds):
        while chunk := await reader.read(65536):
            data += chunk
    return data


async def trickle(port: int, stop: asyncio.Event) -> float:
    """Send a request's headers one byte at a time; how long until the server hung up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    request = b"GET /health HTTP/1.1\r\nhost: x\r\n" + b"x-slow: " + b"a" * 10_000
    try:
        for byte in request:
            if reader.at_eof() or writer.is_closing() or stop.is_set():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(ConnectionError):  # a reset is a hang-up too
            await closed_within(reader, 5)
        writer.close()
    return time.monotonic() - started


async def test_clients_trickling_headers_are_cut_off(settings: Settings) -> None:
    options: dict[str, Any] = {**server_options(), "http": QuickHeaders}
    with LiveServer(create_app(settings), **options) as live:
        port = port_of(live.url)
        stop = asyncio.Event()
        durations = await asyncio.gather(*(trickle(port, stop) for _ in range(200)))
        stop.set()
        assert max(durations) < QuickHeaders.header_timeout + 2, max(durations)
        # A connection that says nothing at all is cut off too.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed_within(reader, QuickHeaders.header_timeout + 2) == b""
        writer.close()
        # A prompt client on the same server is answered.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert (await closed_within(reader, 5)).startswith(b"HTTP/1.1 200")
        writer.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_convstore_serve_refuses_oversized_headers(
    database_url: str, upstream: FakeUpstream
) -> None:
    with server(database_url, upstream) as live:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(live.url))
        header = b"x-big: " + b"a" * (MAX_HEADER_BYTES + 1) + b"\r\n"
        writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\n" + header + b"\r\n")
        answer = await closed_within(reader, 5)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
        writer.close()
        # Headers under the bound are served.
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(live.url))
        header = b"x-big: " + b"a" * (MAX_HEADER_BYTES // 2) + b"\r\n"
        writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n" + header + b"\r\n")
        assert (await closed_within(reader, 5)).startswith(b"HTTP/1.1 200")
        writer.close()
