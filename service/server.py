"""How ``convstore serve`` runs the app: uvicorn, with a shutdown that ends every turn.

uvicorn's own shutdown waits for open connections before it tells the app to shut down, and a
second Ctrl-C skips the app's shutdown altogether: a streamed turn would hold the first up to
its timeout, and the second would leave the turn to be cancelled mid-flight by the event loop's
teardown (tracebacks, and a turn that says nothing true about how it ended). Here shutdown
gives running turns ``grace`` seconds, or until a second Ctrl-C, then ends those still running
as failed (``interrupted``): their streams end with ``turn.failed`` and the process exits
quietly.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
from collections.abc import Callable
from typing import Any

import uvicorn
import uvicorn.supervisors.multiprocess
from litestar import Litestar
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.turns import TurnRunner

SHUTDOWN_GRACE = 30.0
# A client has this long to send a request's line and headers once it has begun (or once it
# has connected), and at most this much of them; an idle keep-alive connection is closed after
# KEEPALIVE_TIMEOUT; past MAX_CONNECTIONS open connections (or running requests) a process
# answers 503. Streams are long (a reasoning model may think for an hour), so no bound is put
# on a response's duration.
HEADER_TIMEOUT = 10.0
MAX_HEADER_BYTES = 64 * 1024
KEEPALIVE_TIMEOUT = 5
MAX_CONNECTIONS = 20_000


def _runner(app: Any) -> TurnRunner | None:
    """The turn runner of the Litestar app inside uvicorn's middleware, once it has started."""
    while app is not None and not isinstance(app, Litestar):
        app = getattr(app, "app", None)
    return getattr(app.state, "turns", None) if app is not None else None


class Server(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        runner = _runner(self.config.loaded_app)
        ending = None
        if runner is not None:
            ending = asyncio.create_task(runner.stop(SHUTDOWN_GRACE, until=lambda: self.force_exit))
        await super().shutdown(sockets)
        if ending is not None:
            await ending
        # Streams of turns just ended send their last event; let them, then shut the app down
        # even after a second Ctrl-C (uvicorn skips it then), so the database is let go of.
        if self.server_state.tasks:
            await asyncio.wait(set(self.server_state.tasks), timeout=5)
        if self.force_exit:
            await self.lifespan.shutdown()


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline and a size bound on a request's headers:
    uvicorn has neither, so a client trickling header bytes held its connection for ever."""

    header_timeout = HEADER_TIMEOUT
    max_header_bytes = MAX_HEADER_BYTES
    _header_deadline: asyncio.TimerHandle | None = None
    _header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if self._header_deadline is None:  # a request after another on a kept-alive connection
            self._arm_header_deadline()

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_header_deadline()
        super().on_headers_complete()

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes and not self.transport.is_closing():
            self._disarm_header_deadline()
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-length: 0\r\nconnection: close\r\n\r\n"
            )
            self.transport.close()

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def server_options() -> dict[str, Any]:
    """uvicorn's settings for every server process (besides host, port and workers)."""
    return {
        "http": HttpProtocol,
        "timeout_keep_alive": KEEPALIVE_TIMEOUT,
        "limit_concurrency": MAX_CONNECTIONS,
    }


def raise_open_files_limit() -> int:
    """Raise this process's limit of open files to its hard limit: each streamed turn holds two
    sockets (its client's and the upstream's), and the usual soft limit of 1,024 would refuse
    connections past about 500 concurrent streams. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if wanted > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            return wanted
    return soft


def run(config: uvicorn.Config, listening: Callable[[int], None] | None = None) -> None:
    """Serve ``config`` until stopped (Ctrl-C or SIGTERM), with one process or several. The
    socket is bound first (a port in use stops here, with uvicorn's message), then
    ``listening`` is told the port it got."""
    raise_open_files_limit()
    sock = config.bind_socket()
    if listening is not None:
        listening(sock.getsockname()[1])
    with contextlib.suppress(KeyboardInterrupt):
        if config.workers > 1:
            # uvicorn's supervisor builds each worker's server from this module attribute.
            uvicorn.supervisors.multiprocess.Server = Server  # type: ignore[attr-defined]
            uvicorn.supervisors.multiprocess.Multiprocess(config, sockets=[sock]).run()
        else:
            Server(config).run(sockets=[sock])
