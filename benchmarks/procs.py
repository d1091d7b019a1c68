"""CPU accounting for the processes a benchmark starts, read from /proc (Linux only).

The harness starts the service and the fake upstream as child processes of the benchmark; this
finds them (and their worker processes) by command line, so that a benchmark can say where the
machine's CPU went: the service, the fake upstream, PostgreSQL (the backends serving the
benchmark's database, and the server's own background processes), the load generator itself,
and everything else on the machine ("others": a busy neighbour skews every number).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
CORES = os.cpu_count() or 1
GROUPS = ("service", "fake", "postgres", "client", "others")


def _stat(pid: int) -> tuple[str, int, float] | None:
    """(command name, parent pid, CPU seconds) of one process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    return name, int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def _processes() -> dict[int, tuple[str, int, float]]:
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                table[int(entry.name)] = stat
    return table


def cpu_seconds(pid: int) -> float:
    """CPU seconds process ``pid`` (all its threads) has used so far; NaN if it is gone."""
    stat = _stat(pid)
    return stat[2] if stat is not None else float("nan")


def rss_bytes(pid: int) -> int:
    """The resident memory of process ``pid`` now, in bytes; 0 if it is gone."""
    try:
        resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except OSError:
        return 0
    return resident * PAGE


def connections_to(port: int) -> int:
    """How many TCP connections on this machine are established to ``port`` (counted on the
    side that connected to it), from /proc/net/tcp and tcp6."""
    count = 0
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                # fields: sl, local address, remote address (hex ip:port), state (01: established)
                if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting on I/O)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def tree(root: int, table: dict[int, tuple[str, int, float]]) -> set[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found = {root}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def children_matching(needle: str) -> list[int]:
    """The pids of the direct children of this process whose command line contains ``needle``."""
    me = os.getpid()
    return [
        pid for pid, (_, ppid, _) in _processes().items() if ppid == me and needle in cmdline(pid)
    ]


def child_matching(needle: str) -> int | None:
    """The pid of a direct child of this process whose command line contains ``needle``."""
    return next(iter(children_matching(needle)), None)


class CpuMeter:
    """CPU seconds used by groups of processes (``GROUPS``) between ``start`` and ``stop``.

    Call ``sample`` every half second or so in between: per-process times are summed from
    sample to sample, so a process that exits (a PostgreSQL backend whose connection closed)
    keeps what it used until the last sample before it went. ``databases`` name the benchmark's
    PostgreSQL databases, whose backends count as "postgres"; backends of other databases count
    as "others".
    """

    def __init__(self, *databases: str | None) -> None:
        self.databases = [d for d in databases if d]
        self.roots = {
            "service": children_matching("service.cli"),
            "fake": children_matching("service.fake_upstream"),
        }
        self.used = dict.fromkeys(GROUPS, 0.0)
        self._last: dict[int, float] = {}
        self._group: dict[int, str | None] = {}
        self._machine = 0.0
        self._client = 0.0

    def _classify(self, pid: int, name: str, mine: dict[int, str]) -> str | None:
        if pid in mine:
            return mine[pid]
        if name == "postgres":
            line = cmdline(pid)
            is_backend = "(" in line or "[local]" in line  # "user db host(port) state"
            if not is_backend or any(f" {d} " in line for d in self.databases):
                return "postgres"
        return None

    def _read(self) -> dict[int, tuple[str, int, float]]:
        table = _processes()
        mine: dict[int, str] = {}
        for group, roots in self.roots.items():
            for root in roots:
                mine.update(dict.fromkeys(tree(root, table), group))
        for pid, (name, _, _) in table.items():
            if pid not in self._group:
                self._group[pid] = self._classify(pid, name, mine)
        return table

    def start(self) -> None:
        table = self._read()
        self._last = {pid: cpu for pid, (_, _, cpu) in table.items()}
        self._machine = machine_busy()
        self._client = time.process_time()
        self.used = dict.fromkeys(GROUPS, 0.0)

    def sample(self) -> None:
        table = self._read()
        for pid, (_, _, cpu) in table.items():
            group = self._group.get(pid)
            if group is not None:
                self.used[group] += cpu - self._last.get(pid, 0.0)
        self._last = {pid: cpu for pid, (_, _, cpu) in table.items()}

    def stop(self) -> dict[str, float]:
        """CPU seconds by group since ``start``."""
        self.sample()
        self.used["client"] = time.process_time() - self._client
        mine = sum(v for k, v in self.used.items() if k != "others")
        self.used["others"] = max(0.0, machine_busy() - self._machine - mine)
        return dict(self.used)

    async def measure(self, seconds: float, every: float = 0.5) -> dict[str, float]:
        """Start, sample every ``every`` seconds for ``seconds``, and stop."""
        end = time.perf_counter() + seconds
        self.start()
        while (left := end - time.perf_counter()) > 0:
            await asyncio.sleep(min(every, left))
            self.sample()
        return self.stop()


def others_busy(seconds: float = 1.0) -> float:
    """Cores used by processes outside this benchmark's tree over ``seconds``."""
    table = _processes()
    ours = tree(os.getpid(), table)
    before_machine = machine_busy()
    before = sum(table[p][2] for p in ours)
    time.sleep(seconds)
    table = _processes()
    after = sum(table[p][2] for p in tree(os.getpid(), table) if p in table)
    return max(0.0, (machine_busy() - before_machine) - (after - before)) / seconds


def wait_for_quiet(limit: float, threshold: float = 0.15) -> float:
    """Wait (up to ``limit`` seconds) until other processes use less than ``threshold`` of a
    core; returns the share of a core they used in the last second."""
    deadline = time.monotonic() + limit
    while True:
        busy = others_busy()
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def add_quiet_wait(parser: argparse.ArgumentParser, default: float, before: str) -> None:
    """The ``--quiet-wait SECONDS`` option, for ``wait_for_quiet`` ``before`` each measurement
    (say, "each size")."""
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=default,
        help=f"seconds to wait, before {before}, for other processes to leave the cores idle",
    )
