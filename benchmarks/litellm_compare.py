"""LiteLLM's proxy beside convstore: what each adds to a chat completion (not streamed) when both
forward to the same fake upstream, at several history lengths, and how many requests each
serves a second with 16 in flight.

    .venv/bin/python -m benchmarks.litellm_compare [--pairs 30] [--sizes 10,100,1000]
                                                   [--database sqlite] [--users 16]
                                                   [--duration 10] [--warmup 2]
                                                   [--litellm PATH] [--quiet-wait 30]

LiteLLM is not one of convstore's dependencies: install its proxy in a virtual environment of
its own (git ignores .bench-venv/), which this benchmark finds by itself:

    python3 -m venv .bench-venv && .bench-venv/bin/pip install 'litellm[proxy]'

(or name any ``litellm`` command with ``--litellm PATH``). The proxy is started with a config
file that maps the model ``grok-4`` to ``openai/grok-4`` at the fake upstream's base URL, with
the fake's key: one worker, no database, the fake's key as its master key (so one client header
serves both), no callbacks, message and spend logging off, its log level at ERROR. It is kept
offline: its catalogues (the model cost map and the like) come from the copies in its package,
and any other outgoing request would go to a proxy address on the loopback that refuses it.

Overhead, as turn_overhead.py measures it: pair by pair, a direct call to the fake upstream with
the history, then the same exchange through the proxy under test; the overhead is the
difference. Through LiteLLM the client sends the whole history (LiteLLM keeps no conversation);
through convstore it sends only the new message, as the first turn on a fresh fork of a
conversation holding the history (convstore reads the history from its database and stores the
new message and the reply). The two take turns, five pairs at a time. Prints the median and
p95 of the overhead in ms, and the share of the cores other processes used meanwhile.

Throughput, with throughput.py's load generator: ``--users`` at once, each with a conversation
that starts with the history and grows by a question and an answer per request, one request in
flight per user; requests per second over ``--duration`` seconds after ``--warmup``, the median
latency, and the proxy's CPU time per request. The fake upstream alone, with the same users,
comes first: all of them share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness
from benchmarks.harness import (
    database,
    database_name,
    fake_upstream,
    free_port,
    http_client,
    machine,
    service,
    summary,
    table,
    wait_ready,
)
from benchmarks.procs import CORES, CpuMeter, add_quiet_wait, wait_for_quiet
from benchmarks.throughput import Run, fake_alone, run_async, through_service
from benchmarks.turn_overhead import Target, history, measure, timed_chat

INSTALL = "python3 -m venv .bench-venv && .bench-venv/bin/pip install 'litellm[proxy]'"
WARMUP_PAIRS = 3  # as turn_overhead.measure
ROUND = 5  # pairs of one proxy before pairs of the other
QUESTION = {"role": "user", "content": "And what follows from that?"}
REFUSED = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection is refused
OFFLINE = {
    # Catalogues LiteLLM would otherwise fetch at start-up or on first use: its bundled copies.
    "LITELLM_OFFLINE_MODE": "true",
    "LITELLM_LOCAL_MODEL_COST_MAP": "true",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "true",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "true",
    "LITELLM_LOCAL_BLOG_POSTS": "true",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "true",
    # Anything else that leaves the loopback goes to a proxy that is not there.
    "HTTP_PROXY": REFUSED,
    "HTTPS_PROXY": REFUSED,
    "ALL_PROXY": REFUSED,
    "NO_PROXY": "127.0.0.1,localhost",
    "LITELLM_LOG": "ERROR",
}


def find_litellm(given: Path | None) -> Path:
    """The ``litellm`` command to run, or exit saying how to install it."""
    found = shutil.which("litellm")
    candidates = [given] if given else [harness.ROOT / ".bench-venv" / "bin" / "litellm"]
    if not given and found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    where = f"{given} is not an executable file. " if given else ""
    sys.exit(
        f"{where}LiteLLM's proxy is not installed. From {harness.ROOT}, install it apart from "
        f"convstore's own environment:\n\n    {INSTALL}\n\n"
        "or name an installed `litellm` command with --litellm PATH."
    )


@contextlib.contextmanager
def litellm_proxy(command: Path, upstream: str) -> Iterator[tuple[str, int]]:
    """LiteLLM's proxy as its own process, forwarding ``grok-4`` to the fake upstream; yields
    its base URL (``.../v1``) and its process id."""
    config = {
        "model_list": [
            {
                "model_name": "grok-4",
                "litellm_params": {
                    "model": "openai/grok-4",
                    "api_base": upstream,
                    "api_key": harness.UPSTREAM_KEY,
                },
            }
        ],
        "litellm_settings": {
            "turn_off_message_logging": True,
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
        },
        "general_settings": {
            # The fake's key as the master key: the same client headers serve both.
            "master_key": harness.UPSTREAM_KEY,
            "disable_spend_logs": True,
            "disable_error_logs": True,
        },
    }
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LITELLM_", "CONVSTORE_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    environment.update(OFFLINE)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        log = Path(folder) / "litellm.log"
        port = free_port()
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [
                    str(command),
                    *("--config", str(path), "--host", "127.0.0.1", "--port", str(port)),
                    *("--num_workers", "1"),
                ],
                env=environment,
                cwd=folder,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            try:
                wait_started(f"http://127.0.0.1:{port}/health/liveliness", process)
            except RuntimeError:
                print(log.read_text()[-4000:], file=sys.stderr)
                raise
            yield f"http://127.0.0.1:{port}/v1", process.pid
        finally:
            process.terminate()
            process.wait(timeout=60)


def wait_started(url: str, process: subprocess.Popen[bytes]) -> None:
    """Wait for LiteLLM (slow to import) to answer ``url``, or to exit."""
    for _ in range(60):
        if process.poll() is not None:
            raise RuntimeError(f"LiteLLM exited with status {process.returncode}")
        with contextlib.suppress(RuntimeError):
            wait_ready(url, timeout=5)
            return
    raise RuntimeError(f"{url} did not come up")


async def litellm_overhead(proxy: str, upstream: str, size: int, pairs: int) -> dict[str, Any]:
    """Pair by pair, a direct call with a history of ``size`` messages and a question, then the
    same through LiteLLM: both in ms, and their difference."""
    messages = [*history(size), QUESTION]
    result: dict[str, list[float]] = collections.defaultdict(list)
    async with http_client() as client, http_client() as direct:
        for number in range(pairs + WARMUP_PAIRS):
            direct_ms = await timed_chat(direct, upstream, messages)
            proxy_ms = await timed_chat(client, proxy, messages)
            if number < WARMUP_PAIRS:
                continue
            result["direct"].append(direct_ms)
            result["proxy"].append(proxy_ms)
            result["first"].append(proxy_ms - direct_ms)
    return result


async def overheads(
    target: Target, proxy: str, upstream: str, size: int, args: Any
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """The pairs of convstore (``turn_overhead.measure``) and of LiteLLM, in rounds of
    ``ROUND`` pairs of one then of the other: a small machine's speed drifts over minutes."""
    ours: dict[str, list[float]] = collections.defaultdict(list)
    theirs: dict[str, list[float]] = collections.defaultdict(list)
    for done in range(0, args.pairs, ROUND):
        count = min(ROUND, args.pairs - done)
        [measured] = await measure([target], upstream, size, count)
        for key, values in measured.items():
            ours[key] += values
        for key, values in (await litellm_overhead(proxy, upstream, size, count)).items():
            theirs[key] += values
    return ours, theirs


def load_row(what: str, kind: str, size: int, run: Run, ok: int, group: str) -> list[Any]:
    latency = summary(run.latencies)
    return [
        size,
        what,
        kind,
        len(run.latencies) / run.window,
        latency["median"],
        latency["p95"],
        run.errors(ok),
        max(run.history),
        run.cpu_per(group),
        run.busy("others"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=30, help="pairs per history length")
    parser.add_argument("--sizes", default="10,100,1000", help="history lengths (messages)")
    parser.add_argument("--database", default="sqlite", help="convstore's: sqlite, postgresql")
    parser.add_argument("--users", type=int, default=16, help="requests in flight")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--litellm", type=Path, help="the `litellm` command to run")
    add_quiet_wait(parser, 30.0, "each size")
    args = parser.parse_args()
    command = find_litellm(args.litellm)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"machine: {machine()}")
    print(
        f"LiteLLM: {command}; pairs per size: {args.pairs} (after {WARMUP_PAIRS} warm-up "
        f"pairs); throughput: {args.users} in flight, {args.duration:g} s after "
        f"{args.warmup:g} s; times in ms\n"
    )
    overhead_rows, load_rows = [], []
    with fake_upstream() as upstream, litellm_proxy(command, upstream) as (proxy, proxy_pid):
        for kind in args.database.split(","):
            with database(kind) as url, service(url, upstream) as (base, key):
                target = Target("convstore", base, key)
                for size in sizes:
                    wait_for_quiet(args.quiet_wait)
                    meter = CpuMeter(database_name(url))
                    meter.roots["service"].append(proxy_pid)  # both proxies are ours
                    meter.start()
                    started = time.perf_counter()
                    ours, theirs = asyncio.run(overheads(target, proxy, upstream, size, args))
                    busy = meter.stop()["others"] / (time.perf_counter() - started) / CORES
                    for what, where, r, through in (
                        ("convstore", kind, ours, "service"),
                        ("LiteLLM", "-", theirs, "proxy"),
                    ):
                        d, t, o = summary(r["direct"]), summary(r[through]), summary(r["first"])
                        times = [d["median"], t["median"], o["median"], o["p95"]]
                        overhead_rows.append([size, what, where, *times, f"{100 * busy:.0f}%"])
                    load = (args.users, args.warmup, args.duration)
                    start = history(size)
                    ran = run_async(fake_alone(upstream, *load, start=start))
                    load_rows.append(load_row("fake alone", "-", size, ran, 200, "fake"))
                    name = database_name(url)
                    ran = run_async(through_service(base, key, *load, name, start=start))
                    load_rows.append(load_row("convstore", kind, size, ran, 201, "service"))
                    meter = CpuMeter()
                    meter.roots["service"] = [proxy_pid]  # the proxy under test, and its workers
                    ran = run_async(fake_alone(proxy, *load, start=start, meter=meter))
                    load_rows.append(load_row("LiteLLM", "-", size, ran, 200, "service"))
    print("overhead over a direct call to the fake upstream with the same history (ms):")
    print(
        table(
            [
                "messages",
                "proxy",
                "database",
                "direct median",
                "through median",
                "overhead median",
                "overhead p95",
                "others",
            ],
            overhead_rows,
        )
    )
    print(f"\nthroughput, {args.users} requests in flight (latency in ms):")
    print(
        table(
            [
                "messages at start",
                "through",
                "database",
                "req/s",
                "median",
                "p95",
                "errors",
                "history at end",
                "its CPU ms/req",
                "others",
            ],
            load_rows,
        )
    )
    print(
        "(others: share of the cores used meanwhile by processes outside this benchmark; "
        "history at end: messages in the longest conversation when the run stopped)"
    )


if __name__ == "__main__":
    main()
