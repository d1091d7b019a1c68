"""Schemathesis fuzzes the service through its own OpenAPI document, authenticated as a tenant
(as an admin on the admin routes): no 500, and every answer fits the document (status, media
type, body, headers).

All of schemathesis's checks run but two. One is `positive_data_acceptance`, which expects every
request the schema allows to succeed: rules no schema can state (a cursor must be one the API
handed out, `through_seq` at most the conversation's length, a turn needs a message to send,
an import's seq numbers must run 1, 2, 3…) rightly refuse some of them with a 4xx.

The other is `ensure_resource_availability`, which expects what a `POST` created to be there at the
next call: a `POST` retried with its `Idempotency-Key` answers as the first one did, naming a
conversation that may have been deleted since (as Stripe's keys do), and a conversation created
with an `expires_at` in the past goes at the next retention sweep.

The upstream is the fake one in its lenient mode (any model name, any parameters), so that what
is fuzzed is this service's own validation, not the upstream's list of models.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from live import LiveServer

from service.app import create_app
from service.fake_upstream import FakeUpstream
from service.settings import Settings
from service.store import Store

EXAMPLES = os.environ.get("CONVSTORE_FUZZ_EXAMPLES", "8")


@pytest.fixture(scope="module")
def lenient_upstream() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream(api_keys=["test-key"], lenient=True)
    upstream.start()
    yield upstream
    upstream.stop()


def schemathesis() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("schemathesis is not installed (it is in the `test` extra)")
    return found


async def test_openapi_fuzzing_finds_nothing(
    settings: Settings, store: Store, lenient_upstream: FakeUpstream, tmp_path: Path
) -> None:
    _, key = await store.create_key("fuzz")
    _, admin = await store.create_key("operators", is_admin=True)
    app = create_app(
        dataclasses.replace(settings, upstream_url=lenient_upstream.base_url),
        retry_backoff=0.01,
    )
    # An oversized invalid body is refused with 413 before it is read: a rejection too.
    config = tmp_path / "schemathesis.toml"
    rules = (
        # A tenant's key, and an admin key for the admin routes (a tenant's is refused there).
        f'headers = {{ Authorization = "Bearer {key}" }}\n'
        "[[operations]]\n"
        'include-path-regex = "^/admin/"\n'
        f'headers = {{ Authorization = "Bearer {admin}" }}\n'
        "[checks.negative_data_rejection]\n"
        'expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", '
        '"422", "428", "429", "5xx"]\n'
        # Sequences of calls along the document's links (a conversation, then a turn in it,
        # then that turn's events and replay...): more of them than single-call examples.
        "[phases.stateful.generation]\nmax-examples = 40\n"
    )
    if store.dialect == "postgresql":
        # The coverage phase's invalid values are refused by validation before any statement
        # runs, the same on either database: the SQLite run sends them, this one the valid
        # boundary values (the longest strings, the largest numbers), which reach storage.
        rules += '[phases.coverage.generation]\nmode = "positive"\n'
    config.write_text(rules, encoding="utf-8")
    with LiveServer(app) as server:
        result = subprocess.run(
            [
                schemathesis(),
                "--config-file",
                str(config),
                "run",
                f"{server.url}/schema/openapi.json",
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance,ensure_resource_availability",
                "--max-examples",
                EXAMPLES,
                "--seed",
                "20261128",
                "--request-timeout",
                "30",
                "--report-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"},
        )
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    assert "API Operations" in result.stdout
