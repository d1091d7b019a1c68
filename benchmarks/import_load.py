"""Big imports against a live server: does `/health` still answer while they run?

    .venv/bin/python benchmarks/import_load.py [--mb 50] [--rounds 1]
                                               [--databases sqlite,postgresql]
                                               [--baseline PATH]

Serves `convstore serve` (with the fake upstream, as the other benchmarks do), then sends two
imports at once: a convstore transcript of one long conversation and a ChatGPT
``conversations.json`` of several long chats, each about ``--mb`` megabytes (both generated here,
within the import limits), while another thread asks for `/health` every 10 ms. Prints, for each
database, `/health`'s latency percentiles while the imports ran (and on the idle server before
them), and how long each import took.

``--baseline PATH`` also serves the code of another checkout (say, ``git worktree add
/tmp/before main``) on a database of its own; rounds alternate between the two checkouts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import ROOT, database, fake_upstream, machine, percentile, service, table

POLL_SECONDS = 0.01
STAMP = "2026-11-28T12:00:00Z"


def words(size: int, salt: int) -> str:
    text = f"{salt} " + " ".join(f"word{i % 97}" for i in range(size // 6 + 1))
    return text[:size]


def transcript_body(megabytes: float, run: str) -> bytes:
    """One conversation of 2.5 kB messages (user and assistant turns), about ``megabytes``."""
    count = int(megabytes * 1_000_000 / 2_600)
    messages: list[dict[str, Any]] = []
    for i in range(count):
        message: dict[str, Any] = {
            "seq": i + 1,
            "role": "user" if i % 2 == 0 else "assistant",
            "content": words(2_400, i),
            "created_at": STAMP,
        }
        if i % 2:
            message["model"] = "grok-4"
            message["usage"] = {
                "prompt_tokens": 900,
                "completion_tokens": 600,
                "total_tokens": 1500,
            }
            message["finish_reason"] = "stop"
        messages.append(message)
    return msgspec.json.encode(
        {
            "format": "convstore.transcript",
            "version": 1,
            "exported_at": STAMP,
            "conversation": {
                "id": f"bench-{run}",
                "title": "a long conversation",
                "model": "grok-4",
                "params": {},
                "metadata": {},
                "created_at": STAMP,
                "updated_at": STAMP,
            },
            "messages": messages,
            "turns": [],
        }
    )


def chatgpt_body(megabytes: float, run: str, chats: int = 10) -> bytes:
    """``chats`` ChatGPT conversations, each one branch of 250-byte messages, about
    ``megabytes`` in all (ChatGPT's export is a tree of mapping nodes with parent and children)."""
    per_chat = int(megabytes * 1_000_000 / 520 / chats)
    conversations = []
    for c in range(chats):
        mapping: dict[str, Any] = {"root": {"id": "root", "message": None, "parent": None}}
        parent = "root"
        for i in range(per_chat):
            node = f"n{i}"
            mapping[parent].setdefault("children", []).append(node)
            mapping[node] = {
                "id": node,
                "message": {
                    "id": f"m{i}",
                    "author": {"role": "user" if i % 2 == 0 else "assistant", "metadata": {}},
                    "create_time": 1_764_000_000 + i,
                    "content": {"content_type": "text", "parts": [words(250, i)]},
                    "status": "finished_successfully",
                    "metadata": {"model_slug": "gpt-4o"} if i % 2 else {},
                    "recipient": "all",
                },
                "parent": parent,
                "children": [],
            }
            parent = node
        conversations.append(
            {
                "title": f"chat {c}",
                "create_time": 1_764_000_000,
                "update_time": 1_764_000_000 + per_chat,
                "mapping": mapping,
                "current_node": parent,
                "conversation_id": f"bench-{run}-{c}",
                "id": f"bench-{run}-{c}",
                "default_model_slug": "gpt-4o",
            }
        )
    return msgspec.json.encode(conversations)


@dataclass
class Poller:
    """GET /health every 10 ms from a thread of its own (so that the imports' uploads in the
    benchmark's event loop do not delay it), keeping each answer's latency in seconds."""

    url: str
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        with httpx.Client(timeout=120) as client:
            next_at = time.perf_counter()
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get(f"{self.url}/health").status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.latencies.append(time.perf_counter() - started)
                else:
                    self.failures += 1
                next_at = max(next_at + POLL_SECONDS, time.perf_counter())
                time.sleep(max(0.0, next_at - time.perf_counter()))


@dataclass
class Outcome:
    idle: list[float]
    busy: list[float]
    failures: int
    imports: dict[str, tuple[int, float]]  # name -> (status, seconds)


async def one_import(
    client: httpx.AsyncClient, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, float]:
    started = time.perf_counter()
    response = await client.post(
        path, content=body, headers={**headers, "content-type": "application/json"}
    )
    seconds = time.perf_counter() - started
    if response.status_code != 201:
        print(f"  {path}: {response.status_code} {response.text[:300]}", file=sys.stderr)
    return response.status_code, seconds


async def measure(base: str, key: str, bodies: dict[str, tuple[str, bytes]]) -> Outcome:
    headers = {"Authorization": f"Bearer {key}"}
    idle = Poller(base)
    idle.start()
    await asyncio.sleep(1.0)
    idle.stop()
    busy = Poller(base)
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        busy.start()
        try:
            results = await asyncio.gather(
                *(one_import(client, path, body, headers) for path, body in bodies.values())
            )
        finally:
            busy.stop()
    return Outcome(
        idle.latencies,
        busy.latencies,
        busy.failures + idle.failures,
        dict(zip(bodies, results, strict=True)),
    )


def ms(values: list[float], share: float) -> float:
    return percentile(values, share) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=50, help="megabytes of each import")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per checkout and database")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout, served alternately with this one"
    )
    args = parser.parse_args()
    codes = [("this", ROOT)]
    if args.baseline:
        codes.append(("baseline", args.baseline.resolve()))

    print(f"machine: {machine()}")
    rows: list[list[Any]] = []
    with fake_upstream() as upstream:
        for kind in args.databases.split(","):
            for round_number in range(args.rounds):
                for code, root in codes:
                    run = f"{kind}-{code}-{round_number}-{time.time_ns()}"
                    bodies = {
                        "transcript": ("/v1/conversations/import", transcript_body(args.mb, run)),
                        "chatgpt": ("/v1/conversations/import/chatgpt", chatgpt_body(args.mb, run)),
                    }
                    sizes = ", ".join(f"{n} {len(b) / 1e6:.1f} MB" for n, (_, b) in bodies.items())
                    print(f"{kind} {code} round {round_number + 1}: {sizes}", flush=True)
                    with (
                        database(kind) as url,
                        service(url, upstream, root=root) as (base, key),
                    ):
                        outcome = asyncio.run(measure(base, key, bodies))
                    (t_status, t_seconds) = outcome.imports["transcript"]
                    (c_status, c_seconds) = outcome.imports["chatgpt"]
                    rows.append(
                        [
                            kind,
                            code,
                            ms(outcome.idle, 0.5),
                            len(outcome.busy),
                            ms(outcome.busy, 0.5),
                            ms(outcome.busy, 0.95),
                            ms(outcome.busy, 0.99),
                            max(outcome.busy, default=float("nan")) * 1000,
                            outcome.failures,
                            f"{t_seconds:.1f} ({t_status})",
                            f"{c_seconds:.1f} ({c_status})",
                        ]
                    )
    print()
    print("/health latency in ms (idle p50 before the imports; the rest while they ran);")
    print("import durations in seconds (HTTP status)")
    headers = ["db", "code", "idle p50", "n", "p50", "p95", "p99", "max", "failed"]
    print(table([*headers, "transcript s", "chatgpt s"], rows))


if __name__ == "__main__":
    main()
