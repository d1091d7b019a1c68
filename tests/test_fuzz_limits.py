"""Property tests of the limits no OpenAPI document can state: how deeply JSON may nest, how
large a body may be, and that cursors are the API's own. Whatever is sent, the answer is a 2xx
or a 4xx problem, never a 500, and what is refused stores nothing."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.schemas import MAX_JSON_DEPTH, MAX_OBJECT_BYTES

Client = httpx.AsyncClient
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
JSON = {"content-type": "application/json"}


def nest(openers: list[str], leaf: bytes) -> bytes:
    """``leaf`` inside arrays (``[``) and objects (``{``) in the given order."""
    head = b"".join(b"[" if o == "[" else b'{"k":' for o in openers)
    tail = b"".join(b"]" if o == "[" else b"}" for o in reversed(openers))
    return head + leaf + tail


depths = st.one_of(
    st.integers(0, MAX_JSON_DEPTH + 2),
    st.integers(MAX_JSON_DEPTH - 2, 1_200),
    st.sampled_from([5_000, 100_000]),
)
patterns = st.lists(st.sampled_from("[{"), min_size=1, max_size=8)
nestings = st.builds(lambda d, p: (p * (d // len(p) + 1))[:d], depths, patterns)
leaves = st.sampled_from([b"1", b'"x"', b"null", b'"' + b"y" * 70_000 + b'"'])
places = st.sampled_from(["metadata", "params", "content", "turn_params", "patch"])


def body_for(place: str, value: bytes) -> tuple[str, str, bytes]:
    if place == "metadata":
        return "POST", "/v1/conversations", b'{"metadata": {"a": ' + value + b"}}"
    if place == "params":
        return "POST", "/v1/conversations", b'{"params": {"a": ' + value + b"}}"
    if place == "content":
        part = b'[{"type": "text", "text": "t", "x": ' + value + b"}]"
        return (
            "POST",
            "/v1/conversations",
            b'{"messages": [{"role": "user", "content": ' + part + b"}]}",
        )
    if place == "turn_params":
        return "POST", "{cid}/turns", b'{"params": {"a": ' + value + b"}}"
    return "PATCH", "{cid}", b'{"metadata": {"a": ' + value + b"}}"


@FUZZ
@given(openers=nestings, leaf=leaves, place=places)
async def test_nesting_and_size_get_a_2xx_or_a_clear_4xx(
    client: Client, alice: dict[str, str], openers: list[str], leaf: bytes, place: str
) -> None:
    cid = (await client.post("/v1/conversations", json={}, headers=alice)).json()["id"]
    value = nest(openers, leaf)
    method, path, body = body_for(place, value)
    path = path.replace("{cid}", f"/v1/conversations/{cid}")
    answer = await client.request(method, path, content=body, headers={**alice, **JSON})
    depth = len(openers) + 1  # inside the outer object
    too_deep = place != "content" and depth > MAX_JSON_DEPTH
    too_deep = too_deep or (place == "content" and len(openers) + 2 > MAX_JSON_DEPTH)
    too_big = place != "content" and len(value) + 8 > MAX_OBJECT_BYTES
    assert answer.status_code < 500, answer.text[:500]
    if too_deep or too_big:
        assert answer.status_code == 422, (depth, len(value), answer.text[:300])
        assert answer.headers["content-type"].startswith("application/problem+json")
        stored = await client.get(f"/v1/conversations/{cid}", headers=alice)
        assert stored.json()["metadata"] == {}
        assert stored.json()["message_count"] == 0
    elif place != "turn_params":
        assert answer.is_success, (depth, answer.text[:300])


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


tamperings = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 200), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 200), st.just(0)),
    st.tuples(st.just("forge"), st.integers(0, 2**70), st.just(0)),
    st.tuples(st.just("text"), st.text(max_size=60), st.just(0)),
)


def tamper(cursor: str, how: tuple[str, Any, int]) -> str:
    kind, where, by = how
    if kind == "flip":
        raw = bytearray(cursor.encode())
        raw[where % len(raw)] = (raw[where % len(raw)] + by) % 128 or 65
        return raw.decode(errors="replace")
    if kind == "cut":
        return cursor[: where % len(cursor)]
    if kind == "forge":
        mac = cursor.partition(".")[2]  # a real signature over another position
        payload = json.dumps(["conversations:alice", where]).encode()
        return f"{_b64(payload)}.{mac}"
    return str(where)


@FUZZ
@given(how=tamperings)
async def test_tampered_cursors_are_400(
    client: Client, alice: dict[str, str], how: tuple[str, Any, int]
) -> None:
    for _ in range(2):
        await client.post(
            "/v1/conversations",
            json={"messages": [{"role": "user", "content": "m"}] * 2},
            headers=alice,
        )
    listed = (await client.get("/v1/conversations?limit=1", headers=alice)).json()
    cid = listed["data"][0]["id"]
    messages = f"/v1/conversations/{cid}/messages"
    for path in ("/v1/conversations", messages):
        good = (await client.get(f"{path}?limit=1", headers=alice)).json()["next_cursor"]
        bad = tamper(good, how)
        answer = await client.get(path, params={"cursor": bad, "limit": 1}, headers=alice)
        if bad in (good, ""):  # the same cursor, or none (the first page)
            assert answer.status_code == 200
        else:
            assert answer.status_code == 400, (bad, answer.text)
            assert answer.json()["code"] == "bad_request"
