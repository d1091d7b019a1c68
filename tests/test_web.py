"""The admin web pages end to end, in a real browser: headless Chromium driven by Playwright
against the service on a real socket, on SQLite and on PostgreSQL.

The browser is Debian's Chromium at /usr/bin/chromium (``apt-get install chromium``); Playwright
never downloads one. Without it the test is skipped, except under CI, where it fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from service.fake_upstream import FakeUpstream, Fault

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
    cells = page.locator("#conversations tbody td:first-child")
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
    assert await browser.cookies() == []

    # The admin key signs in and lands on the list; the cookie is locked down.
    assert await sign_in(page, bearer(admin)) == 303
    assert page.url == f"{base}/admin/"
    (cookie,) = await browser.cookies()
    assert cookie["name"] == COOKIE
    assert cookie["value"] == bearer(admin)
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

    # Signing out clears the cookie; the pages lead to the sign-in form again, and after
    # signing in the browser returns to the page it asked for.
    await page.click("nav >> text=Sign out")
    await page.wait_for_url("**/admin/login")
    assert await browser.cookies() == []
    await page.goto(f"{base}/admin/")
    assert page.url == f"{base}/admin/login"
    await page.goto(f"{base}/admin/c/{ids['groceries']}")
    assert page.url.startswith(f"{base}/admin/login?next=")
    assert await sign_in(page, bearer(admin)) == 303
    assert page.url == f"{base}/admin/c/{ids['groceries']}"
