"""The upstream through proxies and TLS, as the environment sets them (HTTP_PROXY, HTTPS_PROXY,
ALL_PROXY, NO_PROXY, SSL_CERT_FILE): the service against the fake upstream, through a small
forwarding proxy and a TLS front written here, all on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trustme
from live import LiveServer, loopback_server

from service.app import create_app, make_http_client
from service.fake_upstream import FakeUpstream, expected_reply
from service.settings import Settings, SettingsError
from service.upstream import UpstreamClient, UpstreamUnavailable

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
BASIC_USER_PA55 = "Basic " + base64.b64encode(b"user:pa55").decode()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError):
        if writer.can_write_eof():
            writer.write_eof()


async def _relay(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    origin: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """Bytes both ways until both sides are done; then both connections closed."""
    try:
        await asyncio.gather(_pipe(client[0], origin[1]), _pipe(origin[0], client[1]))
    finally:
        for _, writer in (client, origin):
            writer.close()


@dataclasses.dataclass
class ForwardProxy:
    """An HTTP proxy: ``CONNECT host:port`` opens a tunnel; a request in absolute form
    (``POST http://host:port/path``) is sent on to its origin in origin form, one request per
    connection (the origin is asked to close, and so the client is told to). ``seen`` keeps
    each request line, ``credentials`` each ``Proxy-Authorization``."""

    seen: list[str] = dataclasses.field(default_factory=list)
    credentials: list[str | None] = dataclasses.field(default_factory=list)
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")[:-2]
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        method, target, version = head[0].decode().split(" ")
        self.seen.append(f"{method} {target}")
        self.credentials.append(
            next(
                (
                    line.partition(b":")[2].strip().decode()
                    for line in head[1:]
                    if line.lower().startswith(b"proxy-authorization:")
                ),
                None,
            )
        )
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            origin = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await _relay((reader, writer), origin)
            return
        url = urlsplit(target)
        assert url.hostname is not None
        fields = [
            line
            for line in head[1:]
            if not line.lower().startswith((b"connection:", b"keep-alive:", b"proxy-"))
        ]
        length = next(
            (int(f.partition(b":")[2]) for f in fields if f.lower().startswith(b"content-length:")),
            0,
        )
        body = await reader.readexactly(length)
        origin = await asyncio.open_connection(url.hostname, url.port or 80)
        path = url.path + (f"?{url.query}" if url.query else "")
        request_line = f"{method} {path} {version}".encode()
        origin[1].write(b"\r\n".join([request_line, *fields, b"connection: close", b"", body]))
        await origin[1].drain()
        await _relay((reader, writer), origin)


@contextlib.asynccontextmanager
async def forward_proxy() -> AsyncIterator[ForwardProxy]:
    proxy = ForwardProxy()
    async with loopback_server(proxy.handle) as port:
        proxy.url = f"http://127.0.0.1:{port}"
        yield proxy


@contextlib.asynccontextmanager
async def tls_front(ca: trustme.CA, origin: str) -> AsyncIterator[str]:
    """A TLS server for 127.0.0.1 (a certificate from ``ca``) relaying to the plain HTTP
    ``origin``: the fake upstream over https. Yields its base URL."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    target = urlsplit(origin)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await asyncio.open_connection(target.hostname, target.port)
        await _relay((reader, writer), upstream)

    async with loopback_server(handle, ssl=context) as port:
        yield f"https://127.0.0.1:{port}{target.path}"


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment with no proxy variables; set some for a test (undone after it)."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def ca_file(tmp_path: Path) -> tuple[trustme.CA, str]:
    ca = trustme.CA()
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, str(path)


@contextlib.asynccontextmanager
async def service(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The service, its upstream client built from the environment as it is now; a client of
    it that reads no proxy variables itself."""
    with LiveServer(create_app(settings, retry_backoff=0.01)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30, trust_env=False) as http:
            yield http


async def both_turns(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    """A non-streamed and a streamed turn, each completed with the fake's reply."""
    created = await client.post("/v1/conversations", json={}, headers=headers)
    cid = created.json()["id"]
    url = f"/v1/conversations/{cid}/turns"
    first = [{"role": "user", "content": "through the proxy"}]
    answered = await client.post(url, json={"messages": first}, headers=headers)
    assert answered.status_code == 201, answered.text
    assert answered.json()["reply"]["content"] == expected_reply(first)

    again = {"role": "user", "content": "and streamed"}
    streamed = await client.post(url, json={"messages": [again], "stream": True}, headers=headers)
    events = [
        json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")
    ]
    history = [*first, {"role": "assistant", "content": expected_reply(first)}, again]
    assert events[-1]["reply"]["content"] == expected_reply(history), events[-1]


@SQLITE_ONLY
async def test_turns_reach_a_plain_upstream_through_a_forwarding_proxy(
    settings: Settings, alice: dict[str, str], upstream: FakeUpstream, environ: Any
) -> None:
    async with forward_proxy() as proxy:
        environ.setenv("HTTP_PROXY", proxy.url.replace("://", "://user:pa55@"))
        async with service(settings) as client:
            await both_turns(client, alice)
    assert proxy.seen == [f"POST {upstream.base_url}/chat/completions"] * 2
    assert proxy.credentials == [BASIC_USER_PA55] * 2
    assert upstream.calls == 2


@SQLITE_ONLY
@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY"])
async def test_turns_reach_a_tls_upstream_through_a_proxy_tunnel(
    settings: Settings,
    alice: dict[str, str],
    upstream: FakeUpstream,
    environ: Any,
    ca_file: tuple[trustme.CA, str],
    variable: str,
) -> None:
    ca, path = ca_file
    environ.setenv("SSL_CERT_FILE", path)
    async with forward_proxy() as proxy, tls_front(ca, upstream.base_url) as url:
        environ.setenv(variable, proxy.url.replace("://", "://user:pa55@"))
        async with service(dataclasses.replace(settings, upstream_url=url)) as client:
            await both_turns(client, alice)
    where = urlsplit(url).netloc
    assert proxy.seen
    assert set(proxy.seen) == {f"CONNECT {where}"}
    assert set(proxy.credentials) == {BASIC_USER_PA55}
    assert upstream.calls == 2


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("variable", "no_proxy"),
    [("HTTP_PROXY", "NO_PROXY"), ("http_proxy", "no_proxy"), ("ALL_PROXY", "NO_PROXY")],
)
async def test_no_proxy_sends_the_upstream_past_the_proxy(
    settings: Settings,
    alice: dict[str, str],
    upstream: FakeUpstream,
    environ: Any,
    variable: str,
    no_proxy: str,
) -> None:
    async with forward_proxy() as proxy:
        environ.setenv(variable, proxy.url)
        environ.setenv(no_proxy, "example.com,127.0.0.1")
        async with service(settings) as client:
            await both_turns(client, alice)
    assert proxy.seen == []
    assert upstream.calls == 2


@SQLITE_ONLY
async def test_a_tls_upstream_signed_by_an_unknown_ca_fails_the_turn_clearly(
    settings: Settings,
    alice: dict[str, str],
    upstream: FakeUpstream,
    environ: Any,
) -> None:
    environ.delenv("SSL_CERT_FILE", raising=False)
    environ.delenv("SSL_CERT_DIR", raising=False)
    async with tls_front(trustme.CA(), upstream.base_url) as url:
        unknown = dataclasses.replace(settings, upstream_url=url, upstream_max_retries=0)
        async with service(unknown) as client:
            created = await client.post("/v1/conversations", json={}, headers=alice)
            turn = await client.post(
                f"/v1/conversations/{created.json()['id']}/turns",
                json={"messages": [{"role": "user", "content": "hello"}]},
                headers=alice,
            )
    assert turn.status_code == 502, turn.text
    detail = turn.json()["detail"]
    assert detail.startswith(
        "Could not reach the model: the TLS certificate of 127.0.0.1 was not accepted"
    ), detail
    assert "CERTIFICATE_VERIFY_FAILED" in detail
    assert upstream.calls == 0


def test_a_socks_proxy_for_the_upstream_stops_the_client_being_built(
    environ: Any,
) -> None:
    environ.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")
    with pytest.raises(SettingsError, match="ALL_PROXY names a socks5:// proxy"):
        make_http_client(Settings(upstream_url="http://127.0.0.1:9/v1"))
    environ.setenv("NO_PROXY", "127.0.0.1")
    make_http_client(Settings(upstream_url="http://127.0.0.1:9/v1"))


async def test_a_proxy_that_cannot_be_reached_is_named(environ: Any) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    environ.setenv("HTTP_PROXY", f"http://user:secret@127.0.0.1:{port}")
    url = "http://127.0.0.1:9/v1"
    async with make_http_client(Settings(upstream_url=url)) as http:
        client = UpstreamClient(http, base_url=url, api_key=None, timeout=5, max_retries=0)
        with pytest.raises(UpstreamUnavailable) as caught:
            await client.complete({"model": "m"}, conversation_id="c")
    assert caught.value.message == (
        f"Could not reach the model: could not connect to the proxy 127.0.0.1:{port} "
        "(Connection refused)."
    )
