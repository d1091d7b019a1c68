"""The admin web pages end to end, in a real browser: headless Chromium driven by Playwright
against the service on a real socket, on SQLite and on PostgreSQL.

The browser is Debian's Chromium at /usr/bin/chromium (``apt-get install chromium``); Playwright
never downloads one. Without it the test is skipped, except under CI, where it fails.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from http.cookies import Morsel, SimpleCookie
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from live import serve
from sqlalchemy import text, update
from strategies import texts

from service.app import create_app
from service.fake_upstream import FakeUpstream, Fault
from service.settings import Settings
from service.store import Store
from service.tables import admin_session_table, message_table
from service.web import show_json

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Belt and braces: anything not on loopback (which Chromium never proxies) goes to a dead
    # local port, so the browser cannot reach any other host whatever a page or Chromium asks.
    "--proxy-server=http://127.0.0.1:9",
]
COOKIE = "convstore_admin"
PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8Dw"
    "HwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def _browser_missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not CHROMIUM.exists():
        return f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """A fresh headless Chromium profile (downloads accepted), closed after the test."""
    missing = _browser_missing()
    if missing:
        if _in_ci():
            pytest.fail(f"the browser test must run under CI: {missing}")
        pytest.skip(missing)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            accept_downloads=True,
        )
        context.set_default_timeout(10_000)
        try:
            yield context
        finally:
            await context.close()


def bearer(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


async def create(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> str:
    response = await client.post("/v1/conversations", json=body, headers=headers)
    assert response.status_code == 201, response.text
    cid: str = response.json()["id"]
    return cid


async def seed(
    client: httpx.AsyncClient,
    alice: dict[str, str],
    bob: dict[str, str],
    upstream: FakeUpstream,
) -> dict[str, str]:
    """Three conversations of two tenants: one with every kind of message and a completed
    turn, one whose turn failed, one plain."""
    trip = await create(
        client,
        alice,
        title="Trip planning",
        model="grok-3-mini",
        messages=[
            {"role": "system", "content": "You are a travel agent."},
            {
                "role": "user",
                "name": "ann",
                "content": [
                    {"type": "text", "text": "Which umbrella for Zanzibar? <b>not bold</b>"},
                    {"type": "image_url", "image_url": {"url": PIXEL}},
                    {"type": "image_url", "image_url": {"url": "https://example.invalid/sky.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "The forecast decides the umbrella.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Zanzibar"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "Rain, 28 degrees."},
        ],
    )
    turn = await client.post(
        f"/v1/conversations/{trip}/turns",
        json={"messages": [{"role": "user", "content": "So which umbrella?"}]},
        headers=alice,
    )
    assert turn.status_code == 201, turn.text

    budget = await create(client, bob, title="Budget review", model="grok-4")
    upstream.push_fault(Fault(kind="status", status=400))
    failed = await client.post(
        f"/v1/conversations/{budget}/turns",
        json={"messages": [{"role": "user", "content": "Sum the invoices."}]},
        headers=bob,
    )
    assert failed.status_code == 502, failed.text

    groceries = await create(
        client, alice, title="Groceries", messages=[{"role": "user", "content": "Milk, bread."}]
    )
    return {"trip": trip, "budget": budget, "groceries": groceries}


async def sign_in(page: Page, key: str) -> int:
    """Submit the sign-in form; the status of the form's answer (before any redirect)."""
    await page.fill("#key", key)
    async with page.expect_response(
        lambda r: r.url.endswith("/admin/login") and r.request.method == "POST"
    ) as answer:
        await page.click("button[type=submit]")
    await page.wait_for_load_state()
    return (await answer.value).status


async def titles(page: Page) -> list[str]:
    cells = page.locator("#conversations tbody td.title > a:first-child")
    return [t.strip() for t in await cells.all_inner_texts()]


async def test_admin_pages_in_a_browser(
    client: httpx.AsyncClient,
    alice: dict[str, str],
    bob: dict[str, str],
    admin: dict[str, str],
    upstream: FakeUpstream,
    browser: BrowserContext,
    tmp_path: Path,
) -> None:
    ids = await seed(client, alice, bob, upstream)
    # The app listens on 127.0.0.1 only. Chromium treats loopback origins (127.0.0.1 as well
    # as localhost) as potentially trustworthy, so it keeps `Secure` cookies set over plain
    # http there and sends them back: no TLS is needed for the test.
    base = str(client.base_url).rstrip("/")
    page = await browser.new_page()

    # Signed out, every page leads to the sign-in form.
    await page.goto(f"{base}/admin/")
    assert page.url == f"{base}/admin/login"

    # A tenant key is refused, and so is an unknown one; neither sets a cookie.
    assert await sign_in(page, bearer(alice)) == 403
    assert "tenant key" in await page.inner_text("#login-error")
    assert await sign_in(page, "cs_not-a-key") == 401
    assert "unknown or revoked" in await page.inner_text("#login-error")
    assert [c["name"] for c in await browser.cookies()] == ["convstore_admin_csrf"]

    # The admin key signs in and lands on the list; the cookie holds a session id, not the
    # key, and is locked down.
    assert await sign_in(page, bearer(admin)) == 303
    assert page.url == f"{base}/admin/"
    (cookie,) = await browser.cookies()
    assert cookie["name"] == COOKIE
    assert cookie["value"] != bearer(admin)
    assert cookie["httpOnly"] is True
    assert cookie["secure"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/admin"
    assert await titles(page) == ["Groceries", "Budget review", "Trip planning"]
    assert "bob" in await page.inner_text("#conversations")

    # Text search finds the one conversation whose message holds the word.
    await page.fill("#q", "zanzibar")
    await page.click("form.filters button[type=submit]")
    await page.wait_for_url("**/admin/?q=zanzibar*")
    assert await titles(page) == ["Trip planning"]

    # Filters combine; a filtered page's "Next page" link keeps them.
    await page.goto(f"{base}/admin/?tenant=alice&limit=1")
    assert await titles(page) == ["Groceries"]
    await page.click("a[rel=next]")
    assert await titles(page) == ["Trip planning"]
    assert "tenant=alice" in page.url
    assert await page.locator("a[rel=next]").count() == 0
    await page.goto(f"{base}/admin/")
    await page.select_option("#status", "failed")
    await page.click("form.filters button[type=submit]")
    assert await titles(page) == ["Budget review"]

    # The conversation reads like a chat: roles, parts, tool call and result, reasoning.
    await page.goto(f"{base}/admin/?q=zanzibar")
    await page.click("text=Trip planning")
    await page.wait_for_url(f"**/admin/c/{ids['trip']}")
    messages = page.locator("#messages > li")
    roles = await messages.evaluate_all("items => items.map(m => m.dataset.role)")
    assert roles == ["system", "user", "assistant", "tool", "user", "assistant"]
    classes = await messages.evaluate_all("items => items.map(m => m.className)")
    assert [c.split()[-1] for c in classes] == [f"role-{r}" for r in roles]
    user = messages.nth(1)
    # Content is text, never markup: the tags show as typed and make no element.
    assert "<b>not bold</b>" in await user.inner_text()
    assert await user.locator("b").count() == 0
    assert "ann" in await user.locator(".name").inner_text()
    assert await user.locator("img").get_attribute("src") == PIXEL
    # A remote image is a link, not fetched.
    assert await user.locator("a[href='https://example.invalid/sky.png']").count() == 1
    assert await page.locator("img[src^=http]").count() == 0
    call = messages.nth(2)
    assert await call.locator(".function").inner_text() == "get_weather"
    assert json.loads(await call.locator(".arguments").inner_text()) == {"city": "Zanzibar"}
    reasoning = call.locator("details.reasoning")
    assert await reasoning.get_attribute("open") is None  # collapsed until asked for
    await reasoning.locator("summary").click()
    assert await reasoning.get_attribute("open") is not None
    assert "The forecast decides" in await reasoning.inner_text()
    assert "call_1" in await messages.nth(3).locator(".tool-result").inner_text()
    reply = messages.nth(5)
    assert await reply.locator("details.reasoning").count() == 1  # grok-3-mini shows it
    meta = await reply.locator(".reply-meta").inner_text()
    assert "grok-3-mini" in meta
    assert "total" in meta
    assert await page.locator("#turns tr.turn").evaluate_all(
        "rows => rows.map(r => r.dataset.status)"
    ) == ["completed"]

    # The transcript downloads from the page.
    async with page.expect_download() as started:
        await page.click("#download")
    download = await started.value
    assert download.suggested_filename == f"conversation-{ids['trip']}.json"
    saved = tmp_path / "transcript.json"
    await download.save_as(saved)
    transcript = json.loads(saved.read_text("utf-8"))
    assert transcript["format"] == "convstore.transcript"
    assert transcript["conversation"]["id"] == ids["trip"]
    assert [m["role"] for m in transcript["messages"]] == roles
    assert transcript["messages"][2]["tool_calls"][0]["function"]["name"] == "get_weather"

    # A failed turn is marked, with its error.
    await page.goto(f"{base}/admin/c/{ids['budget']}")
    assert await page.locator("#turns tr.status-failed").count() == 1
    error = await page.locator("#turns tr.turn-error").inner_text()
    assert "upstream_error" in error
    assert "upstream 400" in error
    assert "1 failed" in await page.inner_text(".meta")

    # A conversation that does not exist is an HTML 404 page.
    missing = await page.goto(f"{base}/admin/c/00000000-0000-0000-0000-000000000000")
    assert missing is not None
    assert missing.status == 404
    assert "404" in await page.inner_text("h1")

    # Stats: the numbers and an SVG bar chart of turns and tokens per day.
    await page.click("nav >> text=Stats")
    await page.wait_for_url("**/admin/dashboard")
    numbers = await page.inner_text("#numbers")
    assert "3\nconversations" in numbers
    assert "1\nfailed" in numbers
    assert await page.locator("svg.chart").count() == 2
    today = datetime.now(UTC).date().isoformat()
    turns_today = page.locator("svg.chart").first.locator(f"rect.bar[data-day='{today}']")
    assert await turns_today.get_attribute("data-value") == "2"
    assert float(await turns_today.get_attribute("height") or 0) > 0

    # Signing out ends the session and clears the cookie; the pages lead to the sign-in form
    # again, even with the old cookie put back, and after signing in the browser returns to
    # the page it asked for.
    await page.click("nav >> text=Sign out")
    await page.wait_for_url("**/admin/login")
    assert COOKIE not in [c["name"] for c in await browser.cookies()]
    await page.goto(f"{base}/admin/")
    assert page.url == f"{base}/admin/login"
    await browser.add_cookies([cookie])
    await page.goto(f"{base}/admin/")
    assert page.url == f"{base}/admin/login"
    await page.goto(f"{base}/admin/c/{ids['groceries']}")
    assert page.url.startswith(f"{base}/admin/login?next=")
    assert await sign_in(page, bearer(admin)) == 303
    assert page.url == f"{base}/admin/c/{ids['groceries']}"


PHONE = {"width": 390, "height": 844}


async def test_admin_pages_fit_a_phone(
    client: httpx.AsyncClient,
    alice: dict[str, str],
    bob: dict[str, str],
    admin: dict[str, str],
    upstream: FakeUpstream,
    browser: BrowserContext,
    tmp_path: Path,
) -> None:
    """At 390 px wide no page scrolls sideways: long words, ids and JSON wrap, and wide tables
    scroll in their own box. The list marks conversations with a failed turn, and forks."""
    ids = await seed(client, alice, bob, upstream)
    word = "Supercalifragilisticexpialidocious" * 6
    wide = await create(
        client,
        alice,
        title=f"A title with one very long word: {word}",
        model="grok-4-" + "x" * 80,
        metadata={"note": word, "nested": nested(12)},
        messages=[
            {"role": "system", "content": word},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"{word} https://example.invalid/{word}"},
                    {"type": "image_url", "image_url": {"url": f"https://example.invalid/{word}"}},
                    {"type": "file", "file": {"file_data": word, "deep": nested(26)}},
                ],
            },
        ],
    )
    fork = await client.post(f"/v1/conversations/{ids['trip']}/fork", json={}, headers=alice)
    assert fork.status_code == 201, fork.text
    forked = fork.json()["id"]

    base = str(client.base_url).rstrip("/")
    page = await browser.new_page()
    await page.set_viewport_size(PHONE)
    await page.goto(f"{base}/admin/login")
    assert await sign_in(page, bearer(admin)) == 303

    async def page_width(path: str) -> int:
        await page.goto(f"{base}{path}")
        # A picture of each page stays in the test's folder, to look at when this fails.
        name = path.strip("/").replace("/", "_") or "list"
        await page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
        width: int = await page.evaluate("document.scrollingElement.scrollWidth")
        return width

    for path in (
        "/admin/",
        "/admin/?tenant=alice",
        f"/admin/c/{wide}",
        f"/admin/c/{ids['trip']}",
        f"/admin/c/{ids['budget']}",
        f"/admin/c/{forked}",
        "/admin/dashboard",
        "/admin/c/00000000-0000-0000-0000-000000000000",
    ):
        assert await page_width(path) <= PHONE["width"], path
    await page.click("nav >> text=Sign out")
    await page.wait_for_url("**/admin/login")
    assert await page_width("/admin/login") <= PHONE["width"]

    # The list's markers: a failed turn, and a fork that links to where it came from.
    await page.goto(f"{base}/admin/login")
    assert await sign_in(page, bearer(admin)) == 303
    rows = page.locator("#conversations tbody tr")
    marked = await rows.evaluate_all(
        """rows => rows.map(r => [
            r.querySelector('td.title > a').getAttribute('href'),
            [...r.querySelectorAll('.badge')].map(b => b.textContent.trim()),
        ])"""
    )
    badges = {href.rsplit("/", 1)[-1]: found for href, found in marked}
    assert badges[ids["budget"]] == ["failed turn"]
    assert badges[forked] == ["fork"]
    assert badges[ids["trip"]] == []
    assert badges[ids["groceries"]] == []
    assert badges[wide] == []
    fork_link = page.locator(f"#conversations a.badge.fork[href='/admin/c/{ids['trip']}']")
    assert await fork_link.count() == 1


async def test_the_api_explorer_works_offline(
    client: httpx.AsyncClient, browser: BrowserContext
) -> None:
    """Swagger UI at /schema draws the API from this server's files alone (the browser can
    reach no other host), under its content security policy, showing /schema/openapi.json."""
    base = str(client.base_url).rstrip("/")
    page = await browser.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    await page.add_init_script(
        """window.violations = [];
        document.addEventListener('securitypolicyviolation',
            e => window.violations.push(e.violatedDirective + ' ' + e.blockedURI));"""
    )
    answer = await page.goto(f"{base}/schema")
    assert answer is not None
    assert answer.status == 200
    await page.wait_for_selector(".swagger-ui .info .title")
    assert "convstore" in await page.inner_text(".swagger-ui .info .title")
    assert await page.locator(".opblock").count() > 10
    # An operation opens with every answer of the completed document (and its examples).
    turn = page.locator("#operations-turns-V1ConversationsConversationIdTurnsCreateTurn")
    await turn.locator(".opblock-summary").click()
    await turn.locator(".responses-table .response[data-code='502']").wait_for()
    assert await page.evaluate("window.violations") == []
    assert requested
    assert all(url.startswith(f"{base}/") or url.startswith("data:") for url in requested), [
        url for url in requested if not url.startswith(base)
    ]
    shown = await page.evaluate("ui.specSelectors.specJson().toJS()")
    served = (await client.get("/schema/openapi.json")).json()
    assert shown == served


# ---- sessions, cross-site forms and cookies, over a socket with httpx -----------------------
#
# httpx's cookie jar keeps a `Secure` cookie to https only, so these tests carry cookies by
# hand, as the browser above does over http://127.0.0.1: each request sends exactly the cookies
# it is given.

CSRF_COOKIE = "convstore_admin_csrf"
HIDDEN_TOKEN = re.compile(r'name="csrf" value="([^"]*)"')


def cookies_set(response: httpx.Response) -> dict[str, Morsel[str]]:
    """The cookies a response sets, with their attributes."""
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        jar.load(header)
    return dict(jar)


async def send(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    *,
    cookies: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    data: dict[str, str] | None = None,
) -> httpx.Response:
    client.cookies.clear()
    all_headers = dict(headers or {})
    if cookies:
        all_headers["cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    return await client.request(method, path, headers=all_headers, data=data)


def origin_of(client: httpx.AsyncClient) -> dict[str, str]:
    return {"origin": str(client.base_url).rstrip("/")}


async def login_form(
    client: httpx.AsyncClient, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, str]:
    """The sign-in page, and the token its form carries (also set in its cookie)."""
    page = await send(client, "GET", "/admin/login", headers=headers)
    assert page.status_code == 200, page.text
    token = cookies_set(page)[CSRF_COOKIE].value
    match = HIDDEN_TOKEN.search(page.text)
    assert match is not None
    assert match[1] == token
    return page, token


async def sign_in_over_http(
    client: httpx.AsyncClient, key: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    """Sign in as the form does (its page first); the answer to the form's POST."""
    headers = headers or origin_of(client)
    _, token = await login_form(client, headers)
    return await send(
        client,
        "POST",
        "/admin/login",
        cookies={CSRF_COOKIE: token},
        headers=headers,
        data={"key": key, "csrf": token},
    )


async def session_of(client: httpx.AsyncClient, key: str) -> str:
    answer = await sign_in_over_http(client, key)
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/admin/"
    return cookies_set(answer)[COOKIE].value


async def page_token(client: httpx.AsyncClient, session: str) -> str:
    """The form token of a signed-in page (the sign-out form's)."""
    page = await send(client, "GET", "/admin/", cookies={COOKIE: session})
    assert page.status_code == 200, page.text
    match = HIDDEN_TOKEN.search(page.text)
    assert match is not None
    return match[1]


async def is_signed_in(client: httpx.AsyncClient, session: str) -> bool:
    page = await send(client, "GET", "/admin/", cookies={COOKIE: session})
    assert page.status_code in (200, 303), page.text
    return page.status_code == 200


async def session_rows(store: Store) -> list[Any]:
    async with store.engine.connect() as conn:
        return list(
            await conn.execute(
                text("SELECT token_hash, key_id, created_at, expires_at FROM admin_session")
            )
        )


async def test_the_session_cookie_holds_a_random_id_kept_hashed(
    client: httpx.AsyncClient, admin: dict[str, str], store: Store
) -> None:
    key = bearer(admin)
    session = await session_of(client, key)
    assert session != key
    assert key not in session
    assert len(session) >= 43
    assert await is_signed_in(client, session)

    # The database has its SHA-256 hash, the key that signed in, and a fixed end 12 h later.
    (row,) = await session_rows(store)
    assert row.token_hash == hashlib.sha256(session.encode()).hexdigest()
    assert row.token_hash != session
    (key_record,) = [k for k in await store.list_keys() if k.is_admin]
    assert str(row.key_id).replace("-", "") == key_record.id.hex
    created = datetime.fromisoformat(str(row.created_at))
    expires = datetime.fromisoformat(str(row.expires_at))
    assert expires - created == timedelta(hours=12)

    # The session id is no API key.
    for path in ("/admin/conversations", "/v1/conversations"):
        answer = await client.get(path, headers={"Authorization": f"Bearer {session}"})
        assert answer.status_code == 401, path
    # And the key is no session id.
    assert not await is_signed_in(client, key)


async def test_signing_out_ends_the_session_on_the_server(
    client: httpx.AsyncClient, admin: dict[str, str], store: Store
) -> None:
    session = await session_of(client, bearer(admin))
    other = await session_of(client, bearer(admin))
    token = await page_token(client, session)
    out = await send(
        client,
        "POST",
        "/admin/logout",
        cookies={COOKIE: session},
        headers=origin_of(client),
        data={"csrf": token},
    )
    assert out.status_code == 303
    assert out.headers["location"] == "/admin/login"
    assert cookies_set(out)[COOKIE]["max-age"] == "0"
    # A copy of the cookie kept from before signing out no longer works.
    assert not await is_signed_in(client, session)
    assert len(await session_rows(store)) == 1
    # Other sessions of the same key go on.
    assert await is_signed_in(client, other)


async def test_revoking_the_key_ends_its_sessions(
    client: httpx.AsyncClient, admin: dict[str, str], store: Store
) -> None:
    session = await session_of(client, bearer(admin))
    assert await is_signed_in(client, session)
    (record,) = [k for k in await store.list_keys() if k.is_admin]
    assert await store.revoke_key(record.id)
    assert not await is_signed_in(client, session)
    again = await sign_in_over_http(client, bearer(admin))
    assert again.status_code == 401
    assert COOKIE not in cookies_set(again)


async def test_expired_sessions_end_and_are_deleted_at_the_next_sign_in(
    client: httpx.AsyncClient, admin: dict[str, str], store: Store
) -> None:
    old = await session_of(client, bearer(admin))
    past = datetime.now(UTC) - timedelta(minutes=1)
    async with store.engine.begin() as conn:
        await conn.execute(
            update(admin_session_table).values(
                created_at=past - timedelta(hours=12), expires_at=past
            )
        )
    assert not await is_signed_in(client, old)
    assert len(await session_rows(store)) == 1
    new = await session_of(client, bearer(admin))
    (row,) = await session_rows(store)
    assert row.token_hash == hashlib.sha256(new.encode()).hexdigest()


async def test_forms_from_other_sites_are_refused(
    client: httpx.AsyncClient, admin: dict[str, str], store: Store
) -> None:
    key = bearer(admin)
    _, token = await login_form(client)
    base = str(client.base_url).rstrip("/")
    form = {"key": key, "csrf": token}
    for headers in (
        {"origin": "https://evil.example"},
        {"origin": "null"},
        {"referer": "https://evil.example/admin/login"},
        {"origin": base.replace("127.0.0.1", "localhost")},
        {"origin": "http://["},
        {"origin": "127.0.0.1"},
        {},  # neither Origin nor Referer
    ):
        answer = await send(
            client, "POST", "/admin/login", cookies={CSRF_COOKIE: token}, headers=headers, data=form
        )
        assert answer.status_code == 403, headers
        assert answer.headers["content-type"].startswith("text/html")
        assert "another site" in answer.text
        assert COOKIE not in cookies_set(answer)
    assert await session_rows(store) == []

    # The form's token must come back, and match its cookie.
    for cookies, sent in (({}, token), ({CSRF_COOKIE: token}, ""), ({CSRF_COOKIE: token}, "x")):
        answer = await send(
            client,
            "POST",
            "/admin/login",
            cookies=cookies,
            headers=origin_of(client),
            data={"key": key, "csrf": sent},
        )
        assert answer.status_code == 403
        assert "expired" in answer.text
        assert COOKIE not in cookies_set(answer)

    # A Referer naming this host will do when there is no Origin.
    answer = await send(
        client,
        "POST",
        "/admin/login",
        cookies={CSRF_COOKIE: token},
        headers={"referer": f"{base}/admin/login"},
        data=form,
    )
    assert answer.status_code == 303
    session = cookies_set(answer)[COOKIE].value

    # Signing out from another site, or without the page's token, changes nothing.
    good = await page_token(client, session)
    for headers, sent in (({"origin": "https://evil.example"}, good), (origin_of(client), "x")):
        out = await send(
            client,
            "POST",
            "/admin/logout",
            cookies={COOKIE: session},
            headers=headers,
            data={"csrf": sent},
        )
        assert out.status_code == 403
        assert await is_signed_in(client, session)
    # Bad form bodies are refused with a 4xx, never a 500.
    for body in ("csrf=%FF%FE", "\x00", "key=é&csrf=é"):
        answer = await client.post(
            "/admin/login",
            content=body.encode(),
            headers={**origin_of(client), "content-type": "application/x-www-form-urlencoded"},
        )
        assert 400 <= answer.status_code < 500, body


async def test_cookies_are_secure_wherever_browsers_keep_secure_ones(
    settings: Settings, store: Store, admin: dict[str, str]
) -> None:
    key = bearer(admin)
    async with serve(create_app(settings)) as client:
        # Plain http to this machine: browsers keep Secure cookies there.
        for host in ("127.0.0.1", "localhost", "[::1]"):
            port = client.base_url.port
            headers = {"host": f"{host}:{port}", "origin": f"http://{host}:{port}"}
            answer = await sign_in_over_http(client, key, headers)
            assert answer.status_code == 303, host
            assert cookies_set(answer)[COOKIE]["secure"] is True
        # HTTPS at a proxy that uvicorn trusts (127.0.0.1, by default).
        headers = {
            "host": "admin.example.test",
            "origin": "https://admin.example.test",
            "x-forwarded-proto": "https",
        }
        answer = await sign_in_over_http(client, key, headers)
        assert answer.status_code == 303
        assert cookies_set(answer)[COOKIE]["secure"] is True

        # Plain http to another host: the page says why signing in cannot work, and how to
        # make it work; the form's POST sets no cookie.
        headers = {"host": "admin.example.test", "origin": "http://admin.example.test"}
        page = await send(client, "GET", "/admin/login", headers=headers)
        assert page.status_code == 200
        assert 'id="login-blocked"' in page.text
        assert "CONVSTORE_ADMIN_INSECURE_COOKIES=1" in page.text
        assert "HTTPS" in page.text
        assert cookies_set(page) == {}
        answer = await send(
            client,
            "POST",
            "/admin/login",
            cookies={CSRF_COOKIE: "a" * 43},
            headers=headers,
            data={"key": key, "csrf": "a" * 43},
        )
        assert answer.status_code == 403
        assert 'id="login-blocked"' in answer.text
        assert cookies_set(answer) == {}

        # A Host header that names no host is no reason for a 500.
        for host in ("[", "x:abc", ":::", "x:99999"):
            page = await send(client, "GET", "/admin/login", headers={"host": host})
            assert page.status_code == 200, host
            assert 'id="login-blocked"' in page.text
            answer = await send(client, "GET", "/admin/c/1?a=b", headers={"host": host})
            assert answer.status_code == 303, host
            assert answer.headers["location"] == "/admin/login?next=%2Fadmin%2Fc%2F1%3Fa%3Db"

    # On a trusted network, the operator may allow cookies without Secure.
    insecure = dataclasses.replace(settings, admin_insecure_cookies=True)
    async with serve(create_app(insecure)) as client:
        answer = await sign_in_over_http(client, key, headers)
        assert answer.status_code == 303
        session = cookies_set(answer)[COOKIE]
        assert session["secure"] == ""
        assert session["httponly"] is True
        assert session["samesite"].lower() == "strict"
        assert await is_signed_in(client, session.value)


# ---- what a conversation page costs -------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"k": "v"}
    for _ in range(depth):
        value = {"a": value}
    return value


async def test_a_page_grows_with_what_is_stored_and_cuts_long_values_short(
    client: httpx.AsyncClient, store: Store, alice: dict[str, str], admin: dict[str, str]
) -> None:
    """JSON indented at every level makes a part nested n deep take n² spaces on the page; the
    page indents a few levels only, and shows a bounded share of each value, with a link to
    the rest. The API refuses content nested past 32 levels; a database may hold deeper values
    from before that limit, so those are written into it directly."""
    deep = {"role": "user", "content": [{"type": "file", "file": nested(800)}]}
    shallow = {"role": "user", "content": [{"type": "file", "file": nested(1)}]}
    blob = {"role": "user", "content": [{"type": "file", "file": {"file_data": "x" * 60_000}}]}
    long_text = {"role": "assistant", "content": "y" * 150_000}
    calls = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_deep",
                "type": "function",
                # Too deep for any JSON parser here: shown as the text it is.
                "function": {"name": "f", "arguments": "[" * 1500 + "]" * 1500},
            }
        ],
    }
    messages = [deep] * 20 + [blob, long_text, calls]
    cid = await create(client, alice, title="Deep", messages=[shallow] * 20 + messages[20:])
    async with store.engine.begin() as conn:
        await conn.execute(
            update(message_table)
            .where(message_table.c.conversation_id == uuid.UUID(cid), message_table.c.seq <= 20)
            .values(content=deep["content"])
        )
    stored = sum(len(json.dumps(m, separators=(",", ":"))) for m in messages)

    session = await session_of(client, bearer(admin))
    page = await send(client, "GET", f"/admin/c/{cid}", cookies={COOKIE: session})
    assert page.status_code == 200, page.text[:2000]
    # Before: 20 parts of 5 KB made a 26 MB page.
    assert len(page.content) < 2 * stored, (len(page.content), stored)

    # Indentation stops a few levels down.
    lines = re.findall(r"<pre>(.*?)</pre>", page.text, re.DOTALL)[0].splitlines()
    assert max(len(line) - len(line.lstrip(" ")) for line in lines) <= 8

    # The long values are cut short, saying how much is left out, with a link to all of it.
    cut = re.findall(r'… truncated, (\d+) KB more: <a href="([^"]+)">', page.text)
    assert len(cut) == 2, cut
    (blob_more, blob_url), (text_more, text_url) = cut
    assert blob_url == f"/admin/c/{cid}/m/21"
    assert 35 <= int(blob_more) <= 45
    assert text_url == f"/admin/c/{cid}/m/22"
    assert 45 <= int(text_more) <= 50
    raw = await send(client, "GET", blob_url, cookies={COOKIE: session})
    assert raw.status_code == 200
    assert raw.headers["content-type"].startswith("application/json")
    assert raw.json()["content"] == blob["content"]
    assert raw.json()["seq"] == 21
    assert "[" * 1500 in page.text

    # The raw message needs a session, and a message that is not there is a 404 page.
    assert (await send(client, "GET", blob_url)).status_code == 303
    for seq in ("99", "0", "-1", "99999999999999999999"):
        missing = await send(client, "GET", f"/admin/c/{cid}/m/{seq}", cookies={COOKIE: session})
        assert missing.status_code == 404, seq
        assert missing.headers["content-type"].startswith("text/html")
    for path in (f"/admin/c/{cid}/m/x", "/admin/c/nope/m/1"):
        answer = await send(client, "GET", path, cookies={COOKIE: session})
        assert answer.status_code in (400, 404), path


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=40,
)


@given(json_values)
def test_shown_json_is_the_value_however_it_is_laid_out(value: Any) -> None:
    shown = show_json(value, limit=10**9)
    assert shown.more == 0
    assert json.loads(shown.text) == value


def test_shown_json_stays_small_at_any_depth() -> None:
    value = nested(20_000)  # far deeper than any JSON parser here reads, or recursion allows
    shown = show_json(value, limit=10**9)
    compact = len('{"a":') * 20_000 + len('{"k":"v"}') + 20_000
    assert len(shown.text) < compact + 200
    assert shown.text.count("{") == 20_001
    cut = show_json(value, limit=1000)
    assert len(cut.text) == 1000
    assert cut.more == len(shown.text) - 1000


async def test_a_branched_conversation_shows_where_it_branches_and_pages_between_siblings(
    client: httpx.AsyncClient, alice: dict[str, str], admin: dict[str, str]
) -> None:
    """The page reads the active path; a message with siblings has a pager whose links show
    the path through each sibling (down its newest replies), and the message above them says
    that the conversation branches there. No script: every page is a plain link."""
    created = await client.post(
        "/v1/conversations",
        json={"title": "Tree", "messages": [{"role": "user", "content": "question"}]},
        headers=alice,
    )
    cid, question = created.json()["id"], created.json()["messages"][0]["id"]
    replies = []
    for text_ in ("first answer", "second answer", "third answer"):
        appended = await client.post(
            f"/v1/conversations/{cid}/messages",
            json={"parent_id": question, "messages": [{"role": "assistant", "content": text_}]},
            headers=alice,
        )
        replies.append(appended.json()["data"][0]["id"])
    await client.post(
        f"/v1/conversations/{cid}/messages",
        json={"parent_id": replies[0], "messages": [{"role": "user", "content": "more?"}]},
        headers=alice,
    )
    # The active path ends at the first answer's follow-up (the last write).
    session = await session_of(client, bearer(admin))
    page = await send(client, "GET", f"/admin/c/{cid}", cookies={COOKIE: session})
    assert page.status_code == 200, page.text[:2000]
    assert "first answer" in page.text
    assert "more?" in page.text
    assert "second answer" not in page.text
    assert "Branches here: 3 replies" in page.text
    assert "3 on the active path, 5 in all" in page.text
    assert "another branch" not in page.text
    pager = re.search(r'<span class="siblings"[^>]*>(.*?)</span>\s*<a class="raw"', page.text)
    assert pager is not None
    assert "1/3" in pager.group(1)
    after = re.search(r'<a class="after" href="([^"]+)"', page.text)
    assert after is not None
    assert after.group(1).replace("&amp;", "&") == f"/admin/c/{cid}?at={replies[1]}#m-2"

    # The next sibling's path: another branch, with its own pager and raw links.
    other = await send(client, "GET", after.group(1).split("#")[0], cookies={COOKIE: session})
    assert other.status_code == 200
    assert "second answer" in other.text
    assert "first answer" not in other.text
    assert 'id="other-branch"' in other.text
    assert "2/3" in other.text
    raw = re.search(r'<a class="raw" href="([^"]+)"', other.text.split('id="m-2"')[1])
    assert raw is not None
    assert raw.group(1) == f"/admin/c/{cid}/m/2?at={replies[1]}"
    message = await send(client, "GET", raw.group(1), cookies={COOKIE: session})
    assert message.json()["content"] == "second answer"
    # The active path's raw message at the same place is the other one.
    active = await send(client, "GET", f"/admin/c/{cid}/m/2", cookies={COOKIE: session})
    assert active.json()["content"] == "first answer"

    for bad in ("nope", str(uuid.uuid4())):
        missing = await send(client, "GET", f"/admin/c/{cid}?at={bad}", cookies={COOKIE: session})
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("text/html")
