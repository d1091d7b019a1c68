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


def _postgres_programs() -> tuple[str, ...]:
    """Where Debian keeps PostgreSQL's server programs, newest version first."""
    return tuple(str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True))


def _run_as_postgres(command: list[str], folder: Path) -> None:
    done = subprocess.run(
        [*_as_postgres_user(), *command], cwd=folder, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        message = f"{command[0]} failed: {done.stderr.strip()}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


@contextlib.contextmanager
def streaming_replica() -> Iterator[int]:
    """A hot standby of the local PostgreSQL, streaming its WAL: ``pg_basebackup -R`` of the
    whole server into a temporary folder, started with ``pg_ctl`` on a free port. Databases
    created on the server afterwards appear on it too. Yields its port.

    The server must accept replication connections from 127.0.0.1 (`.ci/run` adds the
    pg_hba.conf line)."""
    programs = _postgres_programs()
    basebackup = require_program("pg_basebackup", folders=programs)
    pg_ctl = require_program("pg_ctl", folders=programs)
    folder = _shared_folder("convstore-replica-")
    data = folder / "data"
    port = free_port()
    try:
        _run_as_postgres(
            [
                *(basebackup, "-h", POSTGRES_HOST, "-p", str(POSTGRES_PORT), "-U", "postgres"),
                *("-D", str(data), "-R", "-X", "stream", "--checkpoint=fast"),
            ],
            folder,
        )
        (data / "postgresql.conf").write_text(
            f"listen_addresses = '{POSTGRES_HOST}'\nport = {port}\n"
            f"unix_socket_directories = '{folder}'\nhot_standby = on\nshared_buffers = 32MB\n"
            # A standby query that replay would cancel waits for it instead.
            "max_standby_streaming_delay = -1\n"
        )
        (data / "pg_hba.conf").write_text(f"host all all {POSTGRES_HOST}/32 trust\n")
        if os.geteuid() == 0:
            for name in ("postgresql.conf", "pg_hba.conf"):
                shutil.chown(data / name, "postgres", "postgres")
        log = folder / "replica.log"
        _run_as_postgres(
            [pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "start"], folder
        )
        yield port
    finally:
        if (data / "postmaster.pid").exists():
            _run_as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], folder)
        shutil.rmtree(folder, ignore_errors=True)
