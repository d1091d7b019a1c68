"""Request ids, JSON logs, Prometheus metrics and Server-Timing."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx

from service.observability import REQUEST_ID, JsonFormatter

Client = httpx.AsyncClient


async def test_every_answer_carries_a_request_id(client: Client, alice: dict[str, str]) -> None:
    ok = await client.get("/v1/conversations", headers=alice)
    missing_route = await client.get("/v1/nowhere", headers=alice)
    assert len(ok.headers["x-request-id"]) == 32
    assert missing_route.headers["x-request-id"] != ok.headers["x-request-id"]
    echoed = await client.get("/health", headers={"X-Request-ID": "trace-123.abc"})
    assert echoed.headers["x-request-id"] == "trace-123.abc"
    unsafe = await client.get("/health", headers={"X-Request-ID": "bad id\twith tabs"})
    assert unsafe.headers["x-request-id"] != "bad id\twith tabs"


async def test_turn_has_server_timing_and_metrics_count_it(
    client: Client, alice: dict[str, str]
) -> None:
    created = await client.post("/v1/conversations", json={"model": "grok-3-mini"}, headers=alice)
    cid = created.json()["id"]
    turn = await client.post(
        f"/v1/conversations/{cid}/turns",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers=alice,
    )
    assert turn.status_code == 201
    timing = dict(part.strip().split(";dur=") for part in turn.headers["server-timing"].split(","))
    assert set(timing) == {"db", "upstream", "total"}
    assert 0 < float(timing["db"]) < float(timing["total"])
    assert 0 < float(timing["upstream"]) < float(timing["total"])

    text = (await client.get("/metrics")).text
    samples = _samples(text)
    route = "/v1/conversations/{conversation_id}/turns"
    assert samples[("convstore_requests_total", f'method="POST",route="{route}",status="201"')] >= 1
    assert samples[("convstore_turns_total", 'outcome="completed"')] >= 1
    assert samples[("convstore_turn_seconds_count", "")] >= 1
    assert samples[("convstore_upstream_seconds_count", "")] >= 1
    usage = turn.json()["reply"]["usage"]
    assert (
        samples[("convstore_tokens_total", 'kind="prompt",model="grok-3-mini"')]
        >= (usage["prompt_tokens"])
    )
    assert ("convstore_db_pool_connections_in_use", "") in samples
    assert (await client.get("/metrics")).headers["content-type"].startswith("text/plain")


def _samples(text: str) -> dict[tuple[str, str], float]:
    samples: dict[tuple[str, str], float] = {}
    for line in text.split("\n"):  # not splitlines(): label values may hold other breaks
        if not line or line.startswith("#"):
            continue
        name_labels, value = line.rsplit(" ", 1)
        name, _, labels = name_labels.partition("{")
        labels = ",".join(sorted(labels.rstrip("}").split(","))) if labels else ""
        samples[(name, labels)] = samples.get((name, labels), 0) + float(value)
    return samples


def test_json_log_lines_carry_the_request_id() -> None:
    record = logging.LogRecord(
        "convstore.turns", logging.WARNING, __file__, 1, "turn %s failed", ("t1",), None
    )
    record.fields = {"status": 502}
    token = REQUEST_ID.set("req-1")
    try:
        line: dict[str, Any] = json.loads(JsonFormatter().format(record))
    finally:
        REQUEST_ID.reset(token)
    assert line["message"] == "turn t1 failed"
    assert line["level"] == "warning"
    assert line["logger"] == "convstore.turns"
    assert line["request_id"] == "req-1"
    assert line["status"] == 502
    assert line["time"].endswith("Z")
