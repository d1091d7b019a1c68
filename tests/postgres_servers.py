"""PostgreSQL infrastructure started by tests: PgBouncer in front of the local server, and a
streaming replica of it. Each is a real process with its own configuration in a temporary
folder, on a free port, stopped when its test module is done.

Under CI a missing program fails the test (`.ci/run` installs it); elsewhere it skips."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from live import free_port
from sqlalchemy.engine import make_url

POSTGRES_HOST = "127.0.0.1"
POSTGRES_PORT = 5432


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def require_program(name: str, *, folders: tuple[str, ...] = ()) -> str:
    """The path of a program the test needs: under CI its absence fails the test."""
    found = shutil.which(name, path=os.pathsep.join((*folders, os.environ.get("PATH", ""))))
    if found is None:
        message = f"{name} is not installed (.ci/run installs it)"
        if in_ci():
            pytest.fail(f"{message}; it is required under CI")
        pytest.skip(message)
    return found


def with_port(database_url: str, port: int) -> str:
    """The same database URL, through another port of this machine."""
    url = make_url(database_url).set(host=POSTGRES_HOST, port=port)
    return url.render_as_string(hide_password=False)


def _as_postgres_user() -> list[str]:
    """PgBouncer and PostgreSQL refuse to run as root (CI runs as root): run as postgres."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection((POSTGRES_HOST, port), 0.5):
            return
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{process.args!r} did not listen on {port}: {log.read_text()}")
        time.sleep(0.05)


def _shared_folder(prefix: str) -> Path:
    """A temporary folder the postgres user may use (pytest's own are root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    return folder


@contextlib.contextmanager
def pgbouncer(*, pool_size: int = 3) -> Iterator[int]:
    """PgBouncer in transaction pooling mode in front of the local PostgreSQL (every database,
    user postgres, trust), with at most ``pool_size`` server connections a database, so that
    many clients share few server connections. Yields its port."""
    program = require_program("pgbouncer", folders=("/usr/sbin",))
    folder = _shared_folder("convstore-pgbouncer-")
    port = free_port()
    (folder / "users.txt").write_text('"postgres" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={POSTGRES_HOST} port={POSTGRES_PORT}

[pgbouncer]
listen_addr = {POSTGRES_HOST}
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/users.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 500
"""
    )
    log = folder / "pgbouncer.log"
    # PgBouncer reads its files, then switches to the user -u names.
    user = ["-u", "postgres"] if os.geteuid() == 0 else []
    with log.open("wb") as output:
        process = subprocess.Popen(
            [program, *user, str(folder / "pgbouncer.ini")], stdout=output, stderr=output
        )
    try:
        _wait_for_port(port, process, log)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
