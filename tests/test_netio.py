"""The upstream client's network layer (service/netio.py) against real sockets: plain and TLS
connections, keep-alive reuse, connections the server closed, timeouts, refused connections and
bodies larger than the socket buffers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest
import trustme

from service.netio import UpstreamTransport

LIMITS = httpx.Limits(max_connections=10, max_keepalive_connections=10, keepalive_expiry=60)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


@dataclass
class Server:
    """A small HTTP/1.1 server on the loopback; counts the connections it accepted."""

    url: str
    connections: int = 0
    bodies: list[bytes] = field(default_factory=list)


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request's body, or None when the client closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return await reader.readexactly(length)


def answer(body: bytes = b"ok") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


async def keep_alive(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server
) -> None:
    while (body := await read_request(reader)) is not None:
        srv.bodies.append(body)
        writer.write(answer(b"%d" % len(body)))
        await writer.drain()


@contextlib.asynccontextmanager
async def serve(
    handler: Handler, *, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[Server]:
    srv = Server(url="")

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        srv.connections += 1
        try:
            await handler(reader, writer, srv)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(accepted, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    srv.url = f"{'https' if tls else 'http'}://{host}:{port}"
    try:
        yield srv
    finally:
        server.close()


def client(verify: ssl.SSLContext | bool = True, timeout: float = 5) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=timeout, transport=UpstreamTransport(limits=LIMITS, verify=verify)
    )


async def test_keep_alive_reuses_one_connection() -> None:
    transport = UpstreamTransport(limits=LIMITS)
    async with serve(keep_alive) as srv, httpx.AsyncClient(transport=transport) as http:
        for size in (0, 10, 1000):
            response = await http.post(srv.url, content=b"x" * size)
            assert response.status_code == 200
            assert response.text == str(size)
            assert transport.info() == {"open": 1, "idle": 1}
    assert srv.connections == 1
    assert transport.info() == {"open": 0, "idle": 0}


async def test_tls_with_a_private_certificate_authority() -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)
    trusted = ssl.create_default_context()
    authority.configure_trust(trusted)
    async with serve(keep_alive, tls=server_context, host="localhost") as srv:
        async with client(verify=trusted) as http:
            first = await http.post(srv.url, content=b"hello")
            second = await http.post(srv.url, content=b"again!")
        assert (first.text, second.text) == ("5", "6")
        assert srv.connections == 1
        # A certificate the client does not trust is refused.
        async with client() as http:
            with pytest.raises(httpx.ConnectError):
                await http.post(srv.url, content=b"hello")


async def test_a_connection_the_server_closed_is_not_reused() -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: Server) -> None:
        await read_request(reader)
        writer.write(answer())  # no "connection: close": the client believes it may reuse it
        await writer.drain()

    async with serve(once) as srv, client() as http:
        assert (await http.post(srv.url, content=b"1")).status_code == 200
        await asyncio.sleep(0.1)  # the server has closed it by now
        assert (await http.post(srv.url, content=b"2")).status_code == 200
    assert srv.connections == 2


async def test_a_body_larger_than_the_socket_buffers() -> None:
    body = bytes(range(256)) * (32 * 1024)  # 8 MiB: the transport pauses writing on the way

    async def slow_reader(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server
    ) -> None:
        await asyncio.sleep(0.2)
        await keep_alive(reader, writer, srv)

    async with serve(slow_reader) as srv, client() as http:
        response = await http.post(srv.url, content=body)
    assert response.text == str(len(body))
    assert srv.bodies == [body]


async def test_an_answer_that_never_comes_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: Server) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with serve(silent) as srv, client(timeout=0.2) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(srv.url, content=b"?")


async def test_an_answer_cut_short_is_an_error() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: Server) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
        await writer.drain()

    async with serve(cut) as srv, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(srv.url, content=b"?")


async def test_a_refused_connection() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connecting is refused
        async with client() as http:
            with pytest.raises(httpx.ConnectError):
                await http.post(f"http://127.0.0.1:{port}/", content=b"?")


async def test_a_chunked_body_each_way() -> None:
    """A request body of unknown length goes chunked; a chunked answer arrives piece by piece."""
    received: list[bytes] = []

    async def chunked(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: Server
    ) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower()
        received.append(await reader.readuntil(b"0\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in (b"first ", b"second ", b"third"):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def parts() -> AsyncIterator[bytes]:
        yield b"hello "
        yield b""
        yield b"world"

    async with (
        serve(chunked) as srv,
        client() as http,
        http.stream("POST", srv.url, content=parts()) as response,
    ):
        pieces = [piece async for piece in response.aiter_raw()]
    assert received == [b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"]
    assert pieces == [b"first ", b"second ", b"third"]


async def test_an_answer_read_to_the_close_of_the_connection() -> None:
    async def unframed(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: Server
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await writer.drain()

    transport = UpstreamTransport(limits=LIMITS)
    async with serve(unframed) as srv, httpx.AsyncClient(transport=transport) as http:
        assert (await http.post(srv.url, content=b"?")).text == "all of it"
        assert transport.info() == {"open": 0, "idle": 0}


async def test_connection_close_and_expiry_are_honoured() -> None:
    async def closing(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: Server
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(1)  # the client must not wait for this close

    async with serve(closing) as srv, client() as http:
        for _ in range(2):
            assert (await asyncio.wait_for(http.post(srv.url, content=b"?"), 0.5)).text == "ok"
    assert srv.connections == 2
    brief = httpx.Limits(max_connections=10, max_keepalive_connections=10, keepalive_expiry=0.05)
    transport = UpstreamTransport(limits=brief)
    async with serve(keep_alive) as srv, httpx.AsyncClient(transport=transport) as http:
        await http.post(srv.url, content=b"1")
        await http.post(srv.url, content=b"2")  # within the expiry: the same connection
        await asyncio.sleep(0.1)
        await http.post(srv.url, content=b"3")
    assert srv.connections == 2


async def test_a_full_pool_waits_then_times_out() -> None:
    release = asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        while (body := await read_request(reader)) is not None:
            if body == b"hold":
                await release.wait()
            writer.write(answer(body))
            await writer.drain()

    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    transport = UpstreamTransport(limits=one)
    timeout = httpx.Timeout(5, pool=0.1)
    async with serve(held) as srv, httpx.AsyncClient(transport=transport, timeout=timeout) as http:
        holding = asyncio.create_task(http.post(srv.url, content=b"hold"))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await http.post(srv.url, content=b"next")
        waiting = asyncio.create_task(http.post(srv.url, content=b"after"))
        await asyncio.sleep(0.02)
        release.set()
        assert (await holding).text == "hold"
        assert (await waiting).text == "after"
    assert srv.connections == 1


async def test_a_cancelled_request_gives_its_connection_up() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: Server) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    transport = UpstreamTransport(limits=LIMITS)
    async with serve(silent) as srv, httpx.AsyncClient(transport=transport) as http:
        task = asyncio.create_task(http.post(srv.url, content=b"?"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert transport.info() == {"open": 0, "idle": 0}


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 banana\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
        b"garbage\r\n\r\n",
    ],
)
async def test_a_malformed_answer_is_a_protocol_error(reply: bytes) -> None:
    async def bad(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: Server) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()
        await asyncio.sleep(1)

    async with serve(bad) as srv, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(srv.url, content=b"?")


async def test_head_and_interim_answers() -> None:
    async def replies(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: Server
    ) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")
        else:  # an empty body: the head was all of it
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"final"))
        await writer.drain()
        await asyncio.sleep(1)

    async with serve(replies) as srv, client() as http:
        response = await asyncio.wait_for(http.head(srv.url), 0.5)
        assert (response.status_code, response.headers["content-length"]) == (200, "1234")
        assert response.content == b""
        response = await asyncio.wait_for(http.post(srv.url, content=b""), 0.5)
        assert (response.status_code, response.text) == (200, "final")


async def test_a_large_answer_read_slowly_arrives_whole() -> None:
    """The connection stops reading while the reader lags (flow control), and resumes."""
    body = bytes(range(256)) * (16 * 1024)  # 4 MiB

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        while await read_request(reader) is not None:
            writer.write(answer(body))
            await writer.drain()

    transport = UpstreamTransport(limits=LIMITS)
    async with serve(big) as srv, httpx.AsyncClient(transport=transport) as http:
        for _ in range(2):
            async with http.stream("POST", srv.url, content=b"?") as response:
                pieces = []
                async for piece in response.aiter_raw():
                    pieces.append(piece)
                    await asyncio.sleep(0.001)
            assert b"".join(pieces) == body
        assert transport.info() == {"open": 1, "idle": 1}
    assert srv.connections == 1
