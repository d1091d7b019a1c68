"""The upstream client's network layer (service/netio.py) against real sockets: plain and TLS
connections, keep-alive reuse, connections the server closed, timeouts, refused connections and
bodies larger than the socket buffers. Each exchange is made both ways the service makes them:
through ``httpx.AsyncClient`` over the transport, and by the transport's own ``fetch``."""

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


@dataclass
class Caller:
    """Posts through one transport, as ``httpx.AsyncClient.post`` does or by ``fetch``."""

    transport: UpstreamTransport
    http: httpx.AsyncClient
    fetching: bool

    async def post(self, url: str, body: bytes) -> tuple[int, bytes]:
        if self.fetching:
            answer = await self.transport.fetch(
                b"POST", httpx.URL(url), [], body, self.http.timeout
            )
            return answer.status, answer.content
        response = await self.http.post(url, content=body)
        return response.status_code, response.content


@pytest.fixture(params=["client", "fetch"])
def way(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.asynccontextmanager
async def caller(
    way: str,
    *,
    limits: httpx.Limits = LIMITS,
    verify: ssl.SSLContext | bool = True,
    timeout: float | httpx.Timeout = 5,
) -> AsyncIterator[Caller]:
    transport = UpstreamTransport(limits=limits, verify=verify)
    async with httpx.AsyncClient(transport=transport, timeout=timeout) as http:
        yield Caller(transport, http, way == "fetch")


async def test_keep_alive_reuses_one_connection(way: str) -> None:
    async with serve(keep_alive) as srv, caller(way) as http:
        for size in (0, 10, 1000):
            assert await http.post(srv.url, b"x" * size) == (200, b"%d" % size)
            assert http.transport.info() == {"open": 1, "idle": 1}
    assert srv.connections == 1
    assert http.transport.info() == {"open": 0, "idle": 0}


async def test_fetch_sends_the_headers_given() -> None:
    heads: list[bytes] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: Server) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        body = await reader.readexactly(5)
        writer.write(b"HTTP/1.1 201 Created\r\nx-one: 1\r\nX-Two: 2\r\n" + answer(body)[17:])
        await writer.drain()

    async with serve(echo) as srv, caller("fetch") as http:
        url = httpx.URL(srv.url + "/v1/chat/completions?q=1")
        got = await http.transport.fetch(
            b"PUT",
            url,
            [(b"authorization", b"Bearer k"), (b"x-a", b"b")],
            b"hello",
            httpx.Timeout(5),
        )
    port = url.port
    assert heads == [
        b"PUT /v1/chat/completions?q=1 HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n"
        b"authorization: Bearer k\r\nx-a: b\r\ncontent-length: 5\r\n\r\n" % port
    ]
    assert got.status == 201
    assert got.headers == [(b"x-one", b"1"), (b"X-Two", b"2"), (b"content-length", b"5")]
    assert got.content == b"hello"


async def test_tls_with_a_private_certificate_authority(way: str) -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)
    trusted = ssl.create_default_context()
    authority.configure_trust(trusted)
    async with serve(keep_alive, tls=server_context, host="localhost") as srv:
        async with caller(way, verify=trusted) as http:
            first = await http.post(srv.url, b"hello")
            second = await http.post(srv.url, b"again!")
        assert (first, second) == ((200, b"5"), (200, b"6"))
        assert srv.connections == 1
        # A certificate the client does not trust is refused.
        async with caller(way) as http:
            with pytest.raises(httpx.ConnectError):
                await http.post(srv.url, b"hello")


async def test_a_connection_the_server_closed_is_not_reused(way: str) -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: Server) -> None:
        await read_request(reader)
        writer.write(answer())  # no "connection: close": the client believes it may reuse it
        await writer.drain()

    async with serve(once) as srv, caller(way) as http:
        assert await http.post(srv.url, b"1") == (200, b"ok")
        await asyncio.sleep(0.1)  # the server has closed it by now
        assert await http.post(srv.url, b"2") == (200, b"ok")
    assert srv.connections == 2


async def test_a_body_larger_than_the_socket_buffers(way: str) -> None:
    body = bytes(range(256)) * (32 * 1024)  # 8 MiB: the transport pauses writing on the way

    async def slow_reader(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server
    ) -> None:
        await asyncio.sleep(0.2)
        await keep_alive(reader, writer, srv)

    async with serve(slow_reader) as srv, caller(way) as http:
        assert await http.post(srv.url, body) == (200, b"%d" % len(body))
    assert srv.bodies == [body]


async def test_an_answer_that_never_comes_times_out(way: str) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: Server) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with serve(silent) as srv, caller(way, timeout=0.2) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(srv.url, b"?")
        assert http.transport.info() == {"open": 0, "idle": 0}


async def test_an_answer_cut_short_is_an_error(way: str) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: Server) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
        await writer.drain()

    async with serve(cut) as srv, caller(way) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(srv.url, b"?")
        assert http.transport.info() == {"open": 0, "idle": 0}


async def test_a_refused_connection(way: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connecting is refused
        async with caller(way) as http:
            with pytest.raises(httpx.ConnectError):
                await http.post(f"http://127.0.0.1:{port}/", b"?")
            assert http.transport.info() == {"open": 0, "idle": 0}


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


async def test_an_answer_read_to_the_close_of_the_connection(way: str) -> None:
    async def unframed(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: Server
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await writer.drain()

    async with serve(unframed) as srv, caller(way) as http:
        assert await http.post(srv.url, b"?") == (200, b"all of it")
        assert http.transport.info() == {"open": 0, "idle": 0}


async def test_connection_close_and_expiry_are_honoured(way: str) -> None:
    async def closing(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: Server
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(1)  # the client must not wait for this close

    async with serve(closing) as srv, caller(way) as http:
        for _ in range(2):
            assert await asyncio.wait_for(http.post(srv.url, b"?"), 0.5) == (200, b"ok")
    assert srv.connections == 2
    brief = httpx.Limits(max_connections=10, max_keepalive_connections=10, keepalive_expiry=0.05)
    async with serve(keep_alive) as srv, caller(way, limits=brief) as http:
        await http.post(srv.url, b"1")
        await http.post(srv.url, b"2")  # within the expiry: the same connection
        await asyncio.sleep(0.1)
        await http.post(srv.url, b"3")
    assert srv.connections == 2


async def test_a_full_pool_waits_then_times_out(way: str) -> None:
    release = asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        while (body := await read_request(reader)) is not None:
            if body == b"hold":
                await release.wait()
            writer.write(answer(body))
            await writer.drain()

    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    timeout = httpx.Timeout(5, pool=0.1)
    async with serve(held) as srv, caller(way, limits=one, timeout=timeout) as http:
        holding = asyncio.create_task(http.post(srv.url, b"hold"))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await http.post(srv.url, b"next")
        waiting = asyncio.create_task(http.post(srv.url, b"after"))
        await asyncio.sleep(0.02)
        release.set()
        assert await holding == (200, b"hold")
        assert await waiting == (200, b"after")
    assert srv.connections == 1


async def test_a_cancelled_request_gives_its_connection_up(way: str) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: Server) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with serve(silent) as srv, caller(way) as http:
        task = asyncio.create_task(http.post(srv.url, b"?"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert http.transport.info() == {"open": 0, "idle": 0}


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 banana\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
        b"garbage\r\n\r\n",
    ],
)
async def test_a_malformed_answer_is_a_protocol_error(reply: bytes, way: str) -> None:
    async def bad(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: Server) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()
        await asyncio.sleep(1)

    async with serve(bad) as srv, caller(way) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(srv.url, b"?")


async def test_head_and_interim_answers(way: str) -> None:
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

    async with serve(replies) as srv, caller(way) as http:
        if http.fetching:
            got = await asyncio.wait_for(
                http.transport.fetch(b"HEAD", httpx.URL(srv.url), [], b"", httpx.Timeout(5)), 0.5
            )
            assert (got.status, got.headers, got.content) == (
                200,
                [(b"content-length", b"1234")],
                b"",
            )
        else:
            response = await asyncio.wait_for(http.http.head(srv.url), 0.5)
            assert (response.status_code, response.headers["content-length"]) == (200, "1234")
            assert response.content == b""
        assert await asyncio.wait_for(http.post(srv.url, b""), 0.5) == (200, b"final")


async def test_a_large_answer_arrives_whole_through_fetch() -> None:
    body = bytes(range(256)) * (16 * 1024)  # 4 MiB, more than the read-ahead

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        while await read_request(reader) is not None:
            writer.write(answer(body))
            await writer.drain()

    async with serve(big) as srv, caller("fetch") as http:
        for _ in range(2):
            assert await http.post(srv.url, b"?") == (200, body)
        assert http.transport.info() == {"open": 1, "idle": 1}
    assert srv.connections == 1


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
