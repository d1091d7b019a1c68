"""The upstream client's transport: HTTP/1.1 for httpx over asyncio, parsed by httptools.

``httpx.AsyncClient`` is the client (requests, headers, timeouts, exceptions, streaming
responses); this is the transport under it. httpx's default one goes through httpcore, whose
HTTP/1.1 is h11 (a pure-Python state machine run for every event of every message) over anyio
(a cancel scope around every read and write): 1.3-1.5 ms of CPU per call with a 100-message
history on a 2-core Xeon. Here a connection is an asyncio protocol that feeds what arrives to
httptools (llhttp, the parser uvicorn uses), and a pool keeps connections alive per origin:
0.6-0.7 ms per call, httpx's own share included (benchmarks/upstream_client.py).

A caller with its whole body at hand that wants the whole answer (the non-streamed chat
completion) can also skip httpx's request and response objects and the client's cookie, auth
and redirect handling, with ``UpstreamTransport.fetch``: the same pool, timeouts and exceptions,
for half the CPU of ``httpx.AsyncClient.post`` over this transport.

It speaks what the upstream needs: any method with a body of known length or a chunked one,
answers with a Content-Length, chunked or read-to-close body, keep-alive, TLS. No HTTP/2, no
proxies (httpx routes proxied URLs to transports of its own), no upgrades.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NamedTuple, cast

import httptools
import httpx

Origin = tuple[bytes, bytes, int]


class Answer(NamedTuple):
    """A whole answer, as ``UpstreamTransport.fetch`` returns it."""

    status: int
    headers: list[tuple[bytes, bytes]]
    content: bytes


def _origin(url: httpx.URL) -> Origin:
    scheme = url.raw_scheme
    if scheme not in (b"http", b"https"):
        raise httpx.UnsupportedProtocol(f"Unsupported URL scheme {url.scheme!r}.")
    return scheme, url.raw_host, url.port or (443 if scheme == b"https" else 80)


# Past this many bytes of a body not yet taken by its reader, the connection stops reading.
_READ_AHEAD = 256 * 1024


async def _within(
    future: asyncio.Future[None],
    timeout: float | None,
    error: type[httpx.TimeoutException],
    what: str,
    request: httpx.Request | None,
) -> None:
    try:
        async with asyncio.timeout(timeout):
            await future
    except TimeoutError:
        raise error(f"{what} in {timeout} s.", request=request) from None


class _Connection(asyncio.Protocol):
    """One connection; it carries one exchange at a time, and keeps what the parser gives it
    until the response's reader takes it."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False  # by either side
        self.error: BaseException | None = None
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._paused = False
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0  # bytes in ``body``
        self.head_done = False
        self.done = False
        self.keep_alive = False  # the answer allows another exchange on this connection
        self.length_known = False  # a Content-Length or chunked body (else: read to close)
        self.unexpected = False  # bytes arrived while no exchange was running

    # ---- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self.done or self.idle_since:
            self.unexpected = True  # nothing may come between exchanges: never reuse this one
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = httpx.RemoteProtocolError(f"malformed answer from the upstream: {exc}")
            self.close()
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is not None and self.error is None:
            self.error = httpx.ReadError(str(exc))
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # ---- httptools callbacks ------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (
            lowered == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self.length_known = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:  # an interim answer (100 Continue): the real one follows
            self.reason, self.headers, self.length_known = b"", [], False
            return
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > _READ_AHEAD and self.transport is not None:
            self.transport.pause_reading()  # until the reader catches up (``take``)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.done = True
            self.keep_alive = self.parser.should_keep_alive()  # (reset once this returns)

    # ---- used by the transport and the response stream ---------------------------------

    def take(self) -> bytes:
        """The oldest piece of the body that has arrived."""
        piece = self.body.popleft()
        self.buffered -= len(piece)
        transport = self.transport
        if (
            self.buffered <= _READ_AHEAD
            and transport is not None
            and not self.closed
            and not transport.is_reading()
        ):
            transport.resume_reading()
        return piece

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, timeout: float | None, request: httpx.Request | None) -> None:
        """Wait for something to arrive (or the connection to end)."""
        if self.error is not None:
            raise self.error
        if self.closed:
            if self.head_done and not self.length_known:
                self.done = True  # the body ran to the close of the connection
                return
            raise httpx.RemoteProtocolError(
                "The upstream closed the connection before the answer was complete.",
                request=request,
            )
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await _within(
                self._waiter, timeout, httpx.ReadTimeout, "No answer from the upstream", request
            )
        finally:
            self._waiter = None

    async def send(self, data: bytes, timeout: float | None, request: httpx.Request | None) -> None:
        assert self.transport is not None
        if self.closed:
            raise httpx.WriteError("The connection is closed.", request=request)
        self.transport.write(data)
        if self._paused:
            self._drained = asyncio.get_running_loop().create_future()
            try:
                await _within(
                    self._drained,
                    timeout,
                    httpx.WriteTimeout,
                    "Could not send to the upstream",
                    request,
                )
            finally:
                self._drained = None
            if self.closed:
                raise httpx.WriteError("The upstream closed the connection.", request=request)

    def reusable(self, now: float, expiry: float | None) -> bool:
        expired = expiry is not None and now - self.idle_since > expiry
        return not (self.closed or self.unexpected or self.error or expired)

    def begin(self) -> None:
        self._reset()
        self.idle_since = 0.0

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _ResponseStream(httpx.AsyncByteStream):
    """A response body, as it arrives; closing it gives the connection back (or closes it, if
    the body was not read to its end)."""

    def __init__(
        self,
        transport: UpstreamTransport,
        connection: _Connection,
        request: httpx.Request | None,
        timeout: float | None,
    ) -> None:
        self._transport = transport
        self._connection = connection
        self._request = request
        self._timeout = timeout
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        while True:
            while connection.body:
                yield connection.take()
            if connection.done:
                return
            await connection.wait(self._timeout, self._request)

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._transport._release(self._connection)


class UpstreamTransport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 connections, pooled per origin within ``limits``."""

    def __init__(self, *, limits: httpx.Limits, verify: ssl.SSLContext | bool = True) -> None:
        self._ssl = httpx.create_ssl_context(verify=verify)
        unlimited = 2**31  # httpx.Limits takes None for "no limit"
        self._max_connections = limits.max_connections or unlimited
        self._max_idle = (
            unlimited
            if limits.max_keepalive_connections is None
            else limits.max_keepalive_connections
        )
        self._expiry = limits.keepalive_expiry
        self._idle: dict[Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._open = 0  # connections in use or idle
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        url = request.url
        connection = await self._exchange(
            _origin(url),
            timeouts,
            request,
            lambda connection: self._send_request(connection, request, timeouts.get("write")),
            head_only=request.method == "HEAD",
        )
        return httpx.Response(
            connection.status,
            headers=connection.headers,
            stream=_ResponseStream(self, connection, request, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": connection.reason},
        )

    async def fetch(
        self,
        method: bytes,
        url: httpx.URL,
        headers: Sequence[tuple[bytes, bytes]],
        content: bytes,
        timeout: httpx.Timeout,
    ) -> Answer:
        """One exchange read to its end, without httpx's request and response objects: for a
        caller that has its body at hand and wants the whole answer (half the CPU of
        ``httpx.AsyncClient.post`` over this transport goes to those objects and the client's
        cookies, auth and redirect handling, none of which it needs).

        ``headers`` are sent as given, after ``host`` and before ``content-length``; the
        answer's body is returned as it arrived (not decoded from any ``content-encoding``).
        Failures raise the httpx exceptions ``handle_async_request`` raises.
        """
        timeouts = timeout.as_dict()
        head = [method, b" ", url.raw_path, b" HTTP/1.1\r\nhost: ", url.netloc, b"\r\n"]
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        head += (b"content-length: ", b"%d" % len(content), b"\r\n\r\n")
        message = b"".join(head) + content
        write, read = timeouts.get("write"), timeouts.get("read")
        connection = await self._exchange(
            _origin(url),
            timeouts,
            None,
            lambda connection: connection.send(message, write, None),
            head_only=method == b"HEAD",
        )
        body = _ResponseStream(self, connection, None, read)
        try:
            content = b"".join([piece async for piece in body])
        finally:
            await body.aclose()  # keeps the connection if the answer was read to its end
        return Answer(connection.status, connection.headers, content)

    async def _exchange(
        self,
        origin: Origin,
        timeouts: dict[str, float | None],
        request: httpx.Request | None,
        send: Callable[[_Connection], Awaitable[None]],
        *,
        head_only: bool,
    ) -> _Connection:
        """A connection on which ``send`` sent a request and whose answer's head has arrived."""
        connection = await self._acquire(origin, request, timeouts)
        try:
            connection.begin()
            await send(connection)
            while not connection.head_done:
                await connection.wait(timeouts.get("read"), request)
            if head_only:
                connection.done = True  # its Content-Length describes a body that is not sent
                connection.unexpected = True  # and llhttp would wait for it: do not reuse
        except BaseException:
            connection.close()
            self._release(connection)
            raise
        return connection

    async def _send_request(
        self, connection: _Connection, request: httpx.Request, timeout: float | None
    ) -> None:
        target = request.url.raw_path
        head = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
        chunked = False
        for name, value in request.headers.raw:
            head += (name, b": ", value, b"\r\n")
            if name.lower() == b"transfer-encoding" and value.lower() == b"chunked":
                chunked = True
        head.append(b"\r\n")
        stream = request.stream
        if isinstance(stream, httpx.ByteStream):  # the whole body is at hand: one write
            body = b"".join([chunk async for chunk in stream])
            await connection.send(b"".join(head) + body, timeout, request)
            return
        await connection.send(b"".join(head), timeout, request)
        assert isinstance(stream, httpx.AsyncByteStream)
        async for chunk in stream:
            if not chunk:
                continue
            if chunked:
                chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
            await connection.send(chunk, timeout, request)
        if chunked:
            await connection.send(b"0\r\n\r\n", timeout, request)

    async def _acquire(
        self, origin: Origin, request: httpx.Request | None, timeouts: dict[str, float | None]
    ) -> _Connection:
        """An idle connection to ``origin``, or a new one once the pool has room for it."""
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise RuntimeError("The transport is closed.")
            idle = self._idle.get(origin)
            now = time.monotonic()
            while idle:
                connection = idle.pop()
                self._idle_count -= 1
                if connection.reusable(now, self._expiry):
                    return connection
                connection.close()
                self._open -= 1
            if self._open < self._max_connections:
                break
            if self._idle_count:
                self._evict_one()  # another origin's idle connection makes room
                continue
            waiter = loop.create_future()
            self._waiters.append(waiter)
            timeout = timeouts.get("pool")
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # the room it was given goes to the next one waiting
                if isinstance(exc, TimeoutError):
                    raise httpx.PoolTimeout(
                        f"No upstream connection free in {timeout} s.", request=request
                    ) from None
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self._open += 1
        try:
            return await self._connect(origin, request, timeouts.get("connect"))
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _connect(
        self, origin: Origin, request: httpx.Request | None, timeout: float | None
    ) -> _Connection:
        scheme, raw_host, port = origin
        host = raw_host.decode("ascii")
        tls = scheme == b"https"
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(origin),
                    host,
                    port,
                    ssl=self._ssl if tls else None,
                    server_hostname=host if tls else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"Could not connect to {host}:{port} in {timeout} s.", request=request
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(str(exc) or repr(exc), request=request) from exc
        assert connection.transport is not None
        sock = connection.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def _release(self, connection: _Connection) -> None:
        """A connection's exchange is over: keep it for the next one, or close it."""
        keep = (
            connection.done
            and not connection.closed
            and not connection.unexpected
            and not connection.body
            and connection.keep_alive
            and not self._closed
            and self._idle_count < self._max_idle
        )
        if keep:
            connection.idle_since = time.monotonic()
            self._idle.setdefault(connection.origin, []).append(connection)
            self._idle_count += 1
        else:
            connection.close()
            self._open -= 1
        self._wake_one()

    def _evict_one(self) -> None:
        """Close the idle connection that has waited longest (another origin needs room)."""
        oldest = min((c for pool in self._idle.values() for c in pool), key=lambda c: c.idle_since)
        self._idle[oldest.origin].remove(oldest)
        self._idle_count -= 1
        self._open -= 1
        oldest.close()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        for pool in self._idle.values():
            for connection in pool:
                connection.close()
        self._open -= self._idle_count
        self._idle.clear()
        self._idle_count = 0

    def info(self) -> dict[str, Any]:
        """Connections open and idle (for tests and diagnostics)."""
        return {"open": self._open, "idle": self._idle_count}
