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
from typing import Any

import uvicorn
import uvicorn.supervisors.multiprocess
from litestar import Litestar

from service.turns import TurnRunner

SHUTDOWN_GRACE = 30.0


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


def run(config: uvicorn.Config) -> None:
    """Serve ``config`` until stopped (Ctrl-C or SIGTERM), with one process or several."""
    raise_open_files_limit()
    with contextlib.suppress(KeyboardInterrupt):
        if config.workers > 1:
            # uvicorn's supervisor builds each worker's server from this module attribute.
            uvicorn.supervisors.multiprocess.Server = Server  # type: ignore[attr-defined]
            uvicorn.supervisors.multiprocess.Multiprocess(
                config, sockets=[config.bind_socket()]
            ).run()
        else:
            Server(config).run()
