"""The API explorer at ``/schema``: Swagger UI from files this package serves (it works offline,
under a content security policy), showing the same completed document as
``/schema/openapi.json``."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import serve

from service.app import create_app
from service.settings import Settings


@pytest.fixture
async def schema_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The service on a socket; the document needs no database, so one SQLite file will do."""
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'convstore.db'}")
    async with serve(create_app(settings)) as client:
        yield client


class Assets(HTMLParser):
    """Every URL a page loads (scripts, styles, icons, images), and its inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name in ("src", "href"):
            if found.get(name):
                self.urls.append(str(found[name]))
        self._in_script = tag == "script" and "src" not in found
        if self._in_script:
            self.inline.append("")

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.inline[-1] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False


def embedded_document(page: str) -> Any:
    """The OpenAPI document the Swagger UI page holds (``spec: {...}``)."""
    start = page.index("spec: ") + len("spec: ")
    document, _ = json.JSONDecoder().raw_decode(page, start)
    return document


async def test_the_explorer_loads_nothing_from_elsewhere(
    schema_client: httpx.AsyncClient,
) -> None:
    page = await schema_client.get("/schema")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assets = Assets()
    assets.feed(page.text)
    assert assets.urls, "the page loads Swagger UI's script and styles"
    for url in assets.urls:
        assert url.startswith("/schema/"), url  # from this server, never a CDN
        served = await schema_client.get(url)
        assert served.status_code == 200, url
        kind = served.headers["content-type"]
        if url.endswith(".js"):
            assert kind.startswith(("text/javascript", "application/javascript")), url
            assert b"SwaggerUI" in served.content
        elif url.endswith(".css"):
            assert kind.startswith("text/css"), url
        assert "max-age=31536000" in served.headers["cache-control"], url
    assert any(u.endswith("/swagger-ui-bundle.js") for u in assets.urls)
    assert any(u.endswith("/swagger-ui.css") for u in assets.urls)

    # Scripts and styles from this server only, and the page's one inline script by its hash.
    policy = page.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["style-src"] == "'self'"
    (script,) = assets.inline
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert directives["script-src"] == f"'self' 'sha256-{digest}'"
    assert page.headers["x-content-type-options"] == "nosniff"
    missing = await schema_client.get("/schema/swagger-ui-0/none.js")
    assert missing.status_code == 404


async def test_the_explorer_shows_the_served_document(schema_client: httpx.AsyncClient) -> None:
    served = (await schema_client.get("/schema/openapi.json")).json()
    page = (await schema_client.get("/schema")).text
    assert embedded_document(page) == served
    # What the completed document adds, and Litestar's own lacks: every status of a turn.
    turn = served["paths"]["/v1/conversations/{conversation_id}/turns"]["post"]
    assert {"201", "400", "401", "404", "409", "422", "429", "502", "504"} <= set(turn["responses"])
    assert re.search(r"\bconvstore\b", page)
