"""Admin search: latency of `Store.admin_list` (what `GET /admin/conversations` runs) over a large
store, for each filter, on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/admin_search.py [--conversations 100000] [--tenants 20]
                                                [--repeat 50] [--depth 50]
                                                [--databases sqlite,postgresql]
                                                [--explain q-rare,q-common,first]
                                                [--budget 15] [--timeout 60] [--quiet-wait 60]

Fills a fresh database (migrated first, so SQLite's FTS5 triggers and PostgreSQL's GIN indexes
exist while it fills) with conversations spread over a year and across tenants and models, each
with 2 to 5 messages whose words are drawn from a Zipf-distributed vocabulary (a few very common
words, a long tail of rare ones), and one turn per assistant message, about 1% of them failed.
PostgreSQL is then VACUUM ANALYZEd. Each case is one `admin_list(ConversationFilter(...),
limit=20, cursor=...)` call in process, timed ``--repeat`` times after 2 untimed calls; "deep"
cases time page ``--depth``, reached by following ``next_cursor``. Prints milliseconds, how many
conversations match each filter, and the query plans of the ``--explain`` cases (on PostgreSQL
both the custom plan for the values and the generic plan a prepared statement may switch to
after five runs: the driver prepares every statement, so the timings may reflect either).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import random
import sys
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import database, database_name, machine, summary, table
from benchmarks.procs import CORES, CpuMeter, wait_for_quiet
from service.migrate import upgrade
from service.store import ConversationFilter, Store, make_engine
from service.store.records import CONVERSATION_COLUMNS, C
from service.tables import conversation_table, message_table, turn_table, uuid7

PAGE = 20
START = datetime(2025, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=365)
MODELS = [("grok-4", 60), ("grok-3-mini", 25), ("grok-4-fast", 10), ("grok-code-fast-1", 5)]
COMMON_WORDS = (
    "the of and to a in is that it for you was with on as have be at this are not but from or "
    "by one had all what there can were your which we an when if will more about how up out "
    "them then she many some so these would other into has her two like him see time could no "
    "make than first been its who now people my made over did down only way find use may water "
    "long little very after words called just where most know get through back much before go "
    "good new write our used me man too any day same right look think also around another came "
    "come work three word must because does part even place well such here take why things help "
    "put years different away again off went old number great tell men say small every found "
    "still between name should home big give air line set own under read last never us left end "
    "along while might next sound below saw something thought both few those always looked show "
    "large often together asked house world going want school important until form food keep "
    "children feet land side without boy once animals life enough took sometimes four head above "
    "kind began almost live page got earth need far hand high year mother light parts country"
)


def vocabulary(size: int, rng: random.Random) -> list[str]:
    """``size`` distinct words, most frequent first: plain English, then made-up words."""
    syllables = ["ka", "lo", "mi", "ter", "van", "os", "ul", "re", "zin", "pa", "dro", "qu", "ey"]
    words = COMMON_WORDS.split()
    seen = set(words)
    while len(words) < size:
        word = "".join(rng.choice(syllables) for _ in range(rng.randint(3, 5)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


@dataclass
class Filled:
    """What the fill produced, to choose filters with known selectivity."""

    seconds: float
    conversations: int
    messages: int
    turns: int
    failed: int
    frequency: collections.Counter[str]  # conversations containing each word
    words: list[str]


async def fill(url: str, conversations: int, tenants: int, vocab_size: int, seed: int) -> Filled:
    """Insert conversations, messages and turns directly, in large batches (set-up, timed only to
    show the cost of the text-index triggers and indexes)."""
    rng = random.Random(seed)
    words = vocabulary(vocab_size, rng)
    cumulative = list(itertools.accumulate(1 / rank for rank in range(1, len(words) + 1)))
    model_names = [m for m, _ in MODELS]
    model_weights = [w for _, w in MODELS]
    frequency: collections.Counter[str] = collections.Counter()
    engine = make_engine(url, pool_size=2)
    step = SPAN / conversations
    counts = collections.Counter[str]()
    started = time.perf_counter()

    def text(count: int) -> list[str]:
        return rng.choices(words, cum_weights=cumulative, k=count)

    async with engine.begin() as conn:
        for start in range(0, conversations, 1000):
            convs: list[dict[str, Any]] = []
            messages: list[dict[str, Any]] = []
            turns: list[dict[str, Any]] = []
            for i in range(start, min(start + 1000, conversations)):
                cid = uuid7()
                created = START + step * i + step * rng.random() * 0.5
                model = rng.choices(model_names, weights=model_weights)[0]
                title_words = text(3)
                seen = set(title_words)
                count = rng.randint(2, 5)
                convs.append(
                    {
                        "id": cid,
                        "tenant": f"tenant-{rng.randrange(tenants):02d}",
                        "title": " ".join(title_words).capitalize(),
                        "model": model,
                        "params": {},
                        "metadata": {},
                        "message_count": count,
                        "created_at": created,
                        "updated_at": created,
                    }
                )
                for seq in range(1, count + 1):
                    body = text(rng.randint(8, 30))
                    seen.update(body)
                    at = created + timedelta(seconds=seq)
                    turn_id = None
                    if seq % 2 == 0:
                        turn_id = uuid7()
                        status = "failed" if rng.random() < 0.01 else "completed"
                        counts[status] += 1
                        turns.append(
                            {
                                "id": turn_id,
                                "conversation_id": cid,
                                "status": status,
                                "model": model,
                                "params": {},
                                "stream": False,
                                "attempts": 1,
                                "created_at": at,
                                "completed_at": at,
                                "deadline_at": at,
                                "reply_seq": seq if status == "completed" else None,
                            }
                        )
                    messages.append(
                        {
                            "id": uuid7(),
                            "conversation_id": cid,
                            "seq": seq,
                            "role": "user" if seq % 2 else "assistant",
                            "content": " ".join(body).capitalize() + ".",
                            "turn_id": turn_id,
                            "created_at": at,
                        }
                    )
                frequency.update(seen)
            await conn.execute(conversation_table.insert(), convs)
            await conn.execute(turn_table.insert(), turns)
            await conn.execute(message_table.insert(), messages)
            counts["messages"] += len(messages)
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("VACUUM ANALYZE")
    await engine.dispose()
    return Filled(
        time.perf_counter() - started,
        conversations,
        counts["messages"],
        counts["completed"] + counts["failed"],
        counts["failed"],
        frequency,
        words,
    )


def nearest(filled: Filled, share: float, exclude: frozenset[str] = frozenset()) -> str:
    """The word found in the number of conversations nearest to ``share`` of them."""
    target = share * filled.conversations
    return min(
        (w for w in filled.words if w in filled.frequency and w not in exclude),
        key=lambda w: (abs(filled.frequency[w] - target), w),
    )


@dataclass(frozen=True)
class Case:
    key: str
    description: str
    filters: ConversationFilter
    depth: int = 1  # the page timed: 1 is the first page


def cases(filled: Filled, dialect: str, depth: int) -> list[Case]:
    common = filled.words[0]
    rare = nearest(filled, 20 / filled.conversations)  # ~20 conversations
    first = nearest(filled, 0.05)
    second = nearest(filled, 0.05, frozenset({first}))
    middle = START + SPAN / 2
    none = ConversationFilter(dialect=dialect)
    tenant = replace(none, tenant="tenant-07")
    return [
        Case("first", "first page, no filter", none),
        Case("deep", f"page {depth}, no filter", none, depth),
        Case("tenant", "first page, tenant", tenant),
        Case("tenant-deep", f"page {depth}, tenant", tenant, depth),
        Case("model", "first page, model (5% of rows)", replace(none, model="grok-code-fast-1")),
        Case("q-common", f"q = {common!r} (most common word)", replace(none, q=common)),
        Case("q-rare", f"q = {rare!r} (rare word)", replace(none, q=rare)),
        Case("q-two", f"q = '{first} {second}' (two words)", replace(none, q=f"{first} {second}")),
        Case("tenant-q", f"tenant + q = {common!r}", replace(tenant, q=common)),
        Case("failed", "status = failed", replace(none, status="failed")),
        Case(
            "window",
            "created in one week",
            replace(none, created_after=middle, created_before=middle + timedelta(days=7)),
        ),
    ]


async def timed(
    store: Store, case: Case, repeat: int, budget: float, call_limit: float
) -> tuple[list[float], int, int | str, str]:
    """(ms per call, rows on the page, conversations matching, note). Stops early once
    ``budget`` seconds are spent (after at least 5 timed calls) or a call takes ``call_limit``
    seconds."""

    async def call(cursor: str | None) -> tuple[list[Any], str | None]:
        return await asyncio.wait_for(
            store.admin_list(case.filters, limit=PAGE, cursor=cursor), call_limit
        )

    times: list[float] = []
    rows: list[Any] = []
    cursor = None
    short = ""
    try:
        for page in range(1, case.depth):
            _, cursor = await call(cursor)
            if cursor is None:
                short = f"only {page} pages: timed page 1"
                break
        spent = time.perf_counter()
        for attempt in range(repeat + 2):
            started = time.perf_counter()
            rows, _ = await call(cursor)
            if attempt >= 2:
                times.append((time.perf_counter() - started) * 1000)
            if len(times) >= 5 and time.perf_counter() - spent > budget:
                break
    except TimeoutError:
        return times, len(rows), "?", f"a call took over {call_limit:g} s: stopped"
    matching: int | str = "?"
    with contextlib.suppress(TimeoutError):
        matching = await asyncio.wait_for(store.count_conversations(case.filters), call_limit)
    note = "" if len(times) == repeat else f"stopped after {budget:g} s"
    return times, len(rows), matching, "; ".join(n for n in (short, note) if n)


async def explain(store: Store, case: Case, call_limit: float) -> list[str]:
    """The plan of the first-page query of ``case``, as `admin_list` builds it.

    On PostgreSQL, two plans: the custom plan for these values (what the first five runs of
    the prepared statement use) and the generic plan (what the driver's prepared statement may
    use from the sixth run on, for any values), each with EXPLAIN (ANALYZE, BUFFERS)."""
    query = (
        case.filters.apply(select(*CONVERSATION_COLUMNS, C.tenant))
        .order_by(C.created_at.desc(), C.id.desc())
        .limit(PAGE + 1)
    )
    dialect = store.engine.dialect
    sql = str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    if store.dialect != "postgresql":
        async with store.engine.connect() as conn:
            result = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)
            depth: dict[int, int] = {0: 0}
            lines = []
            for node, parent, _, detail in result:
                depth[node] = depth.get(parent, 0) + 1
                lines.append("  " * (depth[node] - 1) + detail)
            return lines
    compiled = query.compile(dialect=dialect)
    values = ", ".join(
        "'" + v.replace("'", "''") + "'" if isinstance(v, str) else str(v)
        for v in compiled.params.values()
    )
    lines = ["-- custom plan (these values):"]
    generic = ["-- generic plan (any values; PREPARE with plan_cache_mode = force_generic_plan):"]
    async with store.engine.connect() as conn:
        try:
            result = await asyncio.wait_for(
                conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + sql), call_limit
            )
            lines += [row[0] for row in result]
            await conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
            await conn.exec_driver_sql("PREPARE bench_plan AS " + str(compiled))
            result = await asyncio.wait_for(
                conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_plan({values})"),
                call_limit,
            )
            generic += [row[0] for row in result]
            await conn.exec_driver_sql("DEALLOCATE bench_plan")
            await conn.exec_driver_sql("RESET plan_cache_mode")
        except TimeoutError:
            await conn.invalidate()
            async with store.engine.connect() as fresh:
                result = await fresh.exec_driver_sql("EXPLAIN " + sql)
                note = f"(EXPLAIN ANALYZE took over {call_limit:g} s; the plan alone:)"
                return [note, *(row[0] for row in result)]
    return lines + (generic if len(generic) > 1 else [])


async def measure(
    url: str,
    filled: Filled,
    repeat: int,
    depth: int,
    to_explain: list[str],
    budget: float,
    call_limit: float,
) -> tuple[list[list[Any]], dict[str, list[str]]]:
    store = Store(make_engine(url, pool_size=2))
    rows = []
    plans = {}
    try:
        for case in cases(filled, store.dialect, depth):
            times, count, matching, note = await timed(store, case, repeat, budget, call_limit)
            s = summary(times)
            rows.append(
                [case.key, case.description, len(times), s["median"], s["p95"], count, matching]
                + ([note] if note else [])
            )
            if case.key in to_explain:
                plans[f"{case.key}: {case.description}"] = await explain(store, case, call_limit)
    finally:
        await store.engine.dispose()
    return rows, plans


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--vocabulary", type=int, default=20_000, help="distinct words")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--depth", type=int, default=50, help="the deep page timed")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--explain", default="q-rare,q-common,first", help="cases to EXPLAIN")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--budget", type=float, default=15.0, help="seconds of timed calls per case, at most"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per call, at most")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="seconds to wait, before measuring, for other processes to leave the cores idle",
    )
    args = parser.parse_args()
    to_explain = [k for k in args.explain.split(",") if k]
    print(f"machine: {machine()}")
    print(
        f"store: {args.conversations} conversations, {args.tenants} tenants, 2-5 messages each, "
        f"{args.vocabulary} distinct words; {args.repeat} timed calls per case (p50/p95 in ms), "
        f"{PAGE} rows a page\n"
    )
    for kind in args.databases.split(","):
        with database(kind) as url:
            upgrade(url)
            filled = asyncio.run(
                fill(url, args.conversations, args.tenants, args.vocabulary, args.seed)
            )
            print(
                f"{kind}: filled {filled.conversations} conversations, {filled.messages} "
                f"messages, {filled.turns} turns ({filled.failed} failed) in "
                f"{filled.seconds:.1f} s" + (" (with VACUUM ANALYZE)" if kind != "sqlite" else "")
            )
            wait_for_quiet(args.quiet_wait)
            meter = CpuMeter(database_name(url))
            meter.start()
            started = time.perf_counter()
            rows, plans = asyncio.run(
                measure(url, filled, args.repeat, args.depth, to_explain, args.budget, args.timeout)
            )
            headers = ["case", "filter", "n", "p50", "p95", "rows", "matching"]
            if any(len(r) > len(headers) for r in rows):
                headers.append("note")
                rows = [r + [""] * (len(headers) - len(r)) for r in rows]
            others = meter.stop()["others"] / (time.perf_counter() - started) / CORES
            print(table(headers, rows))
            print(f"(other processes used {100 * others:.0f}% of the cores meanwhile)")
            for name, lines in plans.items():
                label = "EXPLAIN (ANALYZE, BUFFERS)" if kind != "sqlite" else "EXPLAIN QUERY PLAN"
                print(f"\n{kind} {label}, {name}:")
                print("\n".join("    " + line for line in lines))
            print(flush=True)


if __name__ == "__main__":
    main()
