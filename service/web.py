"""The admin web pages (``/admin/``): sign in with an admin key, then browse, search and read
every tenant's conversations, download their transcripts and see usage stats.

The pages are server-rendered Jinja templates with autoescaping on: message content is user data
and is only ever rendered as text, never as HTML. Signing in with an admin key starts a session
kept in the database (``admin_session``, only a hash of its id): the cookie holds the random
session id (``HttpOnly``, ``SameSite=Strict``, ``Path=/admin``, ``Secure`` wherever a browser
keeps it), never the key, and the id is no API key. Sessions end at sign-out, 12 hours after
signing in, or when their key is revoked. Every form POST must come from these pages: its
``Origin`` (or ``Referer``) names this host, and it carries a token (the sign-in form's in a
cookie of its own, every other form's derived from the session id). The JSON admin API beside
them keeps using ``Authorization: Bearer``. None of these routes is part of the OpenAPI document.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeAlias
from urllib.parse import urlencode, urlsplit

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie, State
from litestar.di import NamedDependency, Provide
from litestar.enums import RequestEncodingType
from litestar.handlers import BaseRouteHandler
from litestar.params import Body, FromPath, FromQuery, QueryParameter
from litestar.response import Redirect, Template

from service import transcripts
from service.audit import admin_reason
from service.errors import Forbidden, NotFound, ServiceError
from service.routes.transcripts import attachment
from service.settings import Settings
from service.store import ConversationFilter, PathView, Principal, ReadBy, Store

TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")

COOKIE = "convstore_admin"  # the session id
COOKIE_PATH = "/admin"
CSRF_COOKIE = "convstore_admin_csrf"  # the sign-in form's token, sent back in a hidden field
# Sessions end this long after signing in, whatever is done meanwhile (not renewed by use).
SESSION_LIFETIME = timedelta(hours=12)
MAX_SESSION_CHARS = 100  # session ids are 43 characters
TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
LOGIN_PATH = "/admin/login"
HOME_PATH = "/admin/"
PAGE_SIZE = 25
PAGE_SIZES = (10, 25, 50, 100)
MAX_KEY_CHARS = 512  # far longer than any key we issue; longer input is not worth a lookup
MAX_QUERY_CHARS = 500  # as on the JSON admin API
MAX_NAME_CHARS = 200
STATUSES = ("running", "completed", "failed")
ROLES = frozenset({"system", "user", "assistant", "tool"})
STAT_DAYS = (7, 30, 90)
# A page shows this much of one JSON value (a content part, tool-call arguments, an error) and
# of one message, then says how much more there is and links to all of it: a page grows with
# what is stored, and no more than this a message.
JSON_SHOWN_CHARS = 20_000
MESSAGE_SHOWN_CHARS = 100_000
INDENTED_LEVELS = 4  # JSON nested deeper than this is shown compact
MAX_SEQ = 2**31 - 1  # message numbers are 32-bit integers in the database
# Raster images only: an inline SVG could hold links, and a remote URL is not fetched (below).
INLINE_IMAGE = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,", re.IGNORECASE)

# The stylesheet is tiny and changes only with a release: read it once, serve it with a
# content hash in its URL so browsers may cache it for good.
STYLESHEET = (STATIC / "admin.css").read_bytes()
STYLESHEET_URL = f"/admin/static/admin.css?v={hashlib.sha256(STYLESHEET).hexdigest()[:12]}"

# Message content is untrusted: no script runs on these pages, nothing loads from elsewhere,
# and no other site may frame them or learn their URLs. (``same-origin``, not ``no-referrer``:
# with ``no-referrer`` browsers send ``Origin: null`` on the pages' own form POSTs.)
PAGE_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


# ---- authentication -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PageSession:
    """A signed-in admin: the key behind the session, and the session id from the cookie."""

    principal: Principal
    session_id: str

    @property
    def csrf(self) -> str:
        """The token every form of a signed-in page carries: derived from the session id, which
        only this browser holds (in an HttpOnly cookie), so no other site can know it."""
        return hmac.new(self.session_id.encode(), b"convstore admin form", "sha256").hexdigest()


class SignInRequired(Exception):
    """The request carries no cookie of a session that is still valid."""

    def __init__(self, next_path: str | None, *, had_cookie: bool) -> None:
        super().__init__("sign in with an admin key")
        self.next_path = next_path
        self.had_cookie = had_cookie


async def signed_in(request: Request[Any, Any, Any], store: Store) -> PageSession | None:
    """The session named by the request's cookie, if it is still valid (not signed out, not
    expired, its key not revoked); it is also kept on ``request.state`` for error pages."""
    session_id = request.cookies.get(COOKIE)
    if not session_id or len(session_id) > MAX_SESSION_CHARS:
        return None
    principal = await store.admin_session(session_id)
    if principal is None:
        return None
    session = PageSession(principal, session_id)
    request.state.admin_session = session
    return session


async def provide_page_admin(request: Request[Any, Any, Any], state: State) -> PageSession:
    """The admin signed in on this browser; else ``SignInRequired``."""
    session = await signed_in(request, state.store)
    if session is None:
        # Only a page the browser can simply open again is worth coming back to.
        next_path = None
        if request.method == "GET":
            # From the scope: ``request.url`` refuses a Host header with a bad port (500).
            query = request.scope.get("query_string", b"").decode("latin-1")
            next_path = request.scope["path"] + (f"?{query}" if query else "")
        raise SignInRequired(next_path, had_cookie=COOKIE in request.cookies)
    return session


PageAdmin: TypeAlias = NamedDependency[PageSession]


def safe_next(value: str | None) -> str | None:
    """``value`` if it is one of these pages (so the redirect after sign-in cannot lead to
    another site), else None."""
    if not value or len(value) > 2000:
        return None
    if value != "/admin" and not value.startswith(("/admin/", "/admin?")):
        return None
    if any(c in value for c in "\\\r\n\t") or value.startswith(LOGIN_PATH):
        return None
    return value


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine, where browsers keep ``Secure`` cookies over plain
    http too (they count loopback origins as potentially trustworthy)."""
    if not host:
        return False
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def request_host(request: Request[Any, Any, Any]) -> str | None:
    """The host name the request was sent to (its ``Host`` header without the port), or None
    if that is no host name."""
    try:
        return urlsplit("//" + request.headers.get("host", "")).hostname
    except ValueError:
        return None


def cookie_secure(request: Request[Any, Any, Any], settings: Settings) -> bool | None:
    """Whether the cookies of these pages are marked ``Secure`` for this request, or None when
    a browser would drop them: plain http to another host than this machine, unless the
    operator allowed cookies without ``Secure`` there. The scheme is the connection's, or a
    trusted proxy's ``X-Forwarded-Proto`` (uvicorn's ``--forwarded-allow-ips``)."""
    if request.scope.get("scheme") == "https" or is_loopback(request_host(request)):
        return True
    return False if settings.admin_insecure_cookies else None


def _cookie(name: str, value: str, path: str, *, secure: bool, expire: bool = False) -> Cookie:
    # Browser-session cookies: they go when the browser closes, or on sign-out.
    return Cookie(
        key=name,
        value=value,
        path=path,
        max_age=0 if expire else None,
        httponly=True,
        secure=secure,
        samesite="strict",
    )


def session_cookie(session_id: str, *, secure: bool) -> Cookie:
    return _cookie(COOKIE, session_id, COOKIE_PATH, secure=secure)


def expired_cookie() -> Cookie:
    return _cookie(COOKIE, "", COOKIE_PATH, secure=False, expire=True)


def _host_key(host: str, scheme: str) -> str:
    """``host[:port]`` as a browser names it, without the scheme's default port."""
    return host.lower().removesuffix(":443" if scheme == "https" else ":80")


def same_origin(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """A guard for every form POST: the browser's ``Origin`` (or, failing that, ``Referer``)
    must name the host the request was sent to. A form another site makes a browser send
    answers 403. (Browsers send ``Origin`` with every POST; ``Origin: null`` is refused.)"""
    headers = connection.headers
    source = headers.get("origin") or headers.get("referer") or ""
    host = headers.get("host")
    try:
        parts = urlsplit(source)
    except ValueError:  # not a URL at all
        parts = None
    if (
        parts
        and parts.scheme in ("http", "https")
        and host
        and _host_key(parts.netloc, parts.scheme) == _host_key(host, parts.scheme)
    ):
        return
    raise Forbidden(
        "This form was sent from another site, or without saying where from (no Origin or "
        "Referer header naming this host). Open the page on this host and send it again."
    )


def redirect_to_sign_in(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """303 to the sign-in form, remembering the page asked for; a stale cookie is cleared."""
    assert isinstance(exc, SignInRequired)
    # The list is where signing in leads anyway; any other page is worth returning to.
    wanted = exc.next_path if exc.next_path and exc.next_path.rstrip("/") != "/admin" else None
    query = {"next": wanted} if wanted else None
    return Redirect(
        LOGIN_PATH,
        status_code=303,
        query_params=query,
        cookies=[expired_cookie()] if exc.had_cookie else None,
        headers={"cache-control": "no-store"},
    )


def error_page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """A service error (a missing conversation, a bad cursor, a form from another site) as an
    HTML page, not JSON."""
    assert isinstance(exc, ServiceError)
    return Template(
        "error.html",
        context=base_context(
            request.state.get("admin_session"),
            status=exc.status,
            title=exc.title,
            detail=exc.detail,
        ),
        status_code=exc.status,
        headers=PAGE_HEADERS,
    )


def base_context(session: PageSession | None, **context: Any) -> dict[str, Any]:
    return {
        "stylesheet": STYLESHEET_URL,
        "signed_in": session is not None,
        "csrf": session.csrf if session else None,
        **context,
    }


# ---- formatting -----------------------------------------------------------------------------


def when(value: Any) -> dict[str, str] | None:
    """A timestamp as ``<time>`` wants it: ISO 8601 for the machine, UTC minutes for people."""
    if not isinstance(value, datetime):
        return None
    moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return {"iso": moment.isoformat(), "text": moment.strftime("%Y-%m-%d %H:%M UTC")}


@dataclass(frozen=True, slots=True)
class Shown:
    """The part of a long text or JSON value that a page shows, and how much it leaves out."""

    text: str
    more: int = 0  # characters left out

    @property
    def more_kb(self) -> int:
        return max(1, round(self.more / 1024))


def json_pieces(value: Any) -> Iterator[str]:
    """``value`` as JSON text, in pieces: indented by two spaces for its first
    ``INDENTED_LEVELS`` levels and compact below, so that the text stays within a few times
    the size of the value however deep it is nested (indenting every level makes a value
    nested ``n`` deep take ``n²`` spaces). Keys keep their stored order.

    Written with a stack rather than by recursion, and each compact subtree is encoded by
    msgspec, so no nesting depth raises ``RecursionError``."""
    # What is left to write, last first: (depth, value) to encode, or (-1, text) to copy.
    todo: list[tuple[int, Any]] = [(0, value)]
    while todo:
        depth, node = todo.pop()
        if depth < 0:
            yield node
            continue
        if not isinstance(node, dict | list) or not node:
            yield _compact(node)
            continue
        if depth >= INDENTED_LEVELS:
            try:
                yield _compact(node)
                continue
            except RecursionError:  # deeper than msgspec goes from here: take it apart
                pass
        indented = depth < INDENTED_LEVELS
        inner = "\n" + "  " * (depth + 1) if indented else ""
        entries = node.items() if isinstance(node, dict) else ((None, v) for v in node)
        later: list[tuple[int, Any]] = []
        for i, (key, child) in enumerate(entries):
            label = "" if key is None else _compact(str(key)) + (": " if indented else ":")
            later += [(-1, ("," if i else "") + inner + label), (depth + 1, child)]
        close = "}" if isinstance(node, dict) else "]"
        later.append((-1, ("\n" + "  " * depth if indented else "") + close))
        yield "{" if isinstance(node, dict) else "["
        todo.extend(reversed(later))


def _compact(value: Any) -> str:
    return msgspec.json.encode(value, enc_hook=str).decode()


def show_json(value: Any, limit: int = JSON_SHOWN_CHARS) -> Shown:
    """``value`` as JSON (``json_pieces``), at most ``limit`` characters of it."""
    kept: list[str] = []
    size = more = 0
    for piece in json_pieces(value):
        room = max(0, limit - size)
        if room:
            kept.append(piece[:room])
            size += min(room, len(piece))
        more += max(0, len(piece) - room)
    return Shown("".join(kept), more)


def show_text(value: str, limit: int) -> Shown:
    return Shown(value[:limit], max(0, len(value) - limit))


class MessageBudget:
    """How much of one message a page still shows: its text and JSON share
    ``MESSAGE_SHOWN_CHARS``, and one JSON value gets ``JSON_SHOWN_CHARS`` at most."""

    def __init__(self) -> None:
        self.left = MESSAGE_SHOWN_CHARS

    def text(self, value: str) -> Shown:
        return self._spend(show_text(value, self.left))

    def json(self, value: Any) -> Shown:
        return self._spend(show_json(value, min(self.left, JSON_SHOWN_CHARS)))

    def arguments(self, arguments: Any) -> Shown:
        """Tool-call arguments (a JSON string, by the API's contract) as JSON; as given if
        they are not JSON."""
        if isinstance(arguments, str):
            try:
                arguments = msgspec.json.decode(arguments)
            except (msgspec.DecodeError, RecursionError):
                return self.text(arguments)
        return self.json(arguments)

    def _spend(self, shown: Shown) -> Shown:
        self.left -= len(shown.text)
        return shown


def short_json(value: Any) -> str:
    """A small JSON value on one line (usage and the like), cut short if it is not small."""
    shown = show_json(value, JSON_SHOWN_CHARS)
    return shown.text + (" …" if shown.more else "")


def usage_text(usage: Any) -> str | None:
    """Token usage in a few words: prompt, completion (with reasoning), total."""
    if not isinstance(usage, dict):
        return None if usage is None else short_json(usage)
    words = []
    for field, label in (("prompt_tokens", "prompt"), ("completion_tokens", "completion")):
        if isinstance(usage.get(field), int):
            words.append(f"{usage[field]:,} {label}")
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    if isinstance(reasoning, int) and reasoning:
        words.append(f"{reasoning:,} reasoning")
    if isinstance(usage.get("total_tokens"), int):
        words.append(f"{usage['total_tokens']:,} total")
    return " · ".join(words) if words else short_json(usage)


def latency_text(ms: Any) -> str | None:
    if not isinstance(ms, int):
        return None
    return f"{ms} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def content_parts(content: Any, budget: MessageBudget) -> list[dict[str, Any]]:
    """A message's content as parts to show: text as text, images, anything else as JSON.

    Only ``data:`` images are shown inline; a remote image is a link, because loading it would
    tell its host that (and when) an admin read the conversation."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"kind": "text", "text": budget.text(content)}]
    if not isinstance(content, list):
        return [{"kind": "other", "type": type(content).__name__, "json": budget.json(content)}]
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"kind": "text", "text": budget.text(part["text"])})
            continue
        if kind == "image_url" and isinstance(part.get("image_url"), dict):
            url = part["image_url"].get("url")
            if isinstance(url, str) and INLINE_IMAGE.match(url):
                parts.append({"kind": "image", "src": url})
                continue
            if isinstance(url, str) and url.lower().startswith(("https://", "http://")):
                parts.append({"kind": "link", "url": url})
                continue
        parts.append({"kind": "other", "type": str(kind or "part"), "json": budget.json(part)})
    return parts


def message_view(
    m: Any, view_url: str, path_query: str, view: PathView, keep: str = ""
) -> dict[str, Any]:
    """One stored message of the path shown, ready for the template. Its text and JSON are cut
    short past ``MessageBudget``'s share, with a link to the whole message as JSON; if other
    messages share its parent, a pager to them (``< 2/3 >``)."""
    budget = MessageBudget()
    reasoning = budget.text(m.reasoning_content) if m.reasoning_content else None
    parts = content_parts(m.content, budget)
    calls = []
    for call in m.tool_calls if isinstance(m.tool_calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        function = function if isinstance(function, dict) else {}
        calls.append(
            {
                "id": call.get("id") if isinstance(call, dict) else None,
                "name": function.get("name") or "(unnamed)",
                "arguments": budget.arguments(function.get("arguments", "")),
            }
        )
    is_reply = m.turn_id is not None or m.model is not None or m.usage is not None
    return {
        "seq": m.seq,
        "role": m.role,
        "role_class": m.role if m.role in ROLES else "other",
        "name": m.name,
        "created": when(m.created_at),
        "parts": parts,
        "tool_calls": calls,
        "tool_call_id": m.tool_call_id,
        "reasoning": reasoning,
        "raw_url": f"{view_url}/m/{m.seq}{path_query}",
        "pager": pager_view(m, view_url, view, keep),
        "reply": (
            {
                "model": m.model,
                "finish_reason": m.finish_reason,
                "usage": usage_text(m.usage),
                "turn_id": str(m.turn_id) if m.turn_id else None,
            }
            if is_reply
            else None
        ),
    }


def pager_view(m: Any, view_url: str, view: PathView, keep: str = "") -> dict[str, Any] | None:
    """Where a message's siblings are: its place among them and links to the one before and
    after it (each shown down its newest replies, ``keep`` added to their query), or None if it
    has none."""
    if not m.sibling_count or m.sibling_count < 2:
        return None
    before, after = view.neighbours.get(m.id, (None, None))
    return {
        "index": m.sibling_index,
        "count": m.sibling_count,
        "before": f"{view_url}?at={before}{keep}#m-{m.seq}" if before else None,
        "after": f"{view_url}?at={after}{keep}#m-{m.seq}" if after else None,
    }


def context_text(context: Any) -> str | None:
    """What the model saw on a turn, in a line: the strategy, the seq ranges sent, dropped and
    summarised, the input's tokens (estimated, and as the upstream counted them), the request
    body's SHA-256."""
    if not isinstance(context, dict):
        return None

    def seqs(key: str) -> str:
        spans = context.get(key) or []
        return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans) or "none"

    parts = [str(context.get("strategy", "full")), f"sent {seqs('sent')}"]
    if context.get("dropped"):
        parts.append(f"dropped {seqs('dropped')}")
    if context.get("summarised"):
        parts.append(f"summarised {seqs('summarised')}")
    tokens = f"~{context.get('estimated_input_tokens', 0):,} tokens estimated"
    if context.get("upstream_input_tokens") is not None:
        tokens += f", {context['upstream_input_tokens']:,} counted"
    parts.append(f"{tokens} of {context.get('max_input_tokens', 0):,}")
    if context.get("request_sha256"):
        parts.append(f"request sha256 {context['request_sha256'][:16]}…")
    return "; ".join(parts)


def turn_view(t: Any) -> dict[str, Any]:
    error = t.error if isinstance(t.error, dict) else ({"detail": t.error} if t.error else None)
    return {
        "id": str(t.id),
        "status": t.status,
        "model": t.model,
        "created": when(t.created_at),
        "latency": latency_text(t.latency_ms),
        "usage": usage_text(t.usage),
        "finish_reason": t.finish_reason,
        "reply_seq": t.reply_seq,
        "reply_id": str(t.reply_id) if t.reply_id else None,
        "context": context_text(t.context),
        "error": (
            {
                "code": error.get("code"),
                "detail": error.get("detail"),
                "upstream_status": error.get("upstream_status"),
                "json": show_json(error),
            }
            if error
            else None
        ),
    }


def conversation_view(c: Any) -> dict[str, Any]:
    return {
        "id": str(c.id),
        "title": c.title,
        "tenant": c.tenant,
        "model": c.model,
        "message_count": c.message_count,
        "created": when(c.created_at),
        "updated": when(c.updated_at),
        "params": show_json(c.params) if c.params else None,
        "metadata": show_json(c.metadata) if c.metadata else None,
        "source_id": getattr(c, "source_id", None),
        "forked_from_id": str(c.forked_from_id) if getattr(c, "forked_from_id", None) else None,
        "expires_at": when(getattr(c, "expires_at", None)),
        "legal_hold": getattr(c, "legal_hold", False),
        "url": f"/admin/c/{c.id}",
    }


# ---- the list's filters ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListForm:
    """The list page's filter form, as the admin filled it in (empty fields are None)."""

    q: str | None = None
    tenant: str | None = None
    model: str | None = None
    status: str | None = None
    created_after: str | None = None
    created_before: str | None = None
    limit: str | None = None  # page size

    @property
    def filtered(self) -> bool:
        return any(v for k, v in asdict(self).items() if k != "limit")

    def query(self, **extra: str | None) -> str:
        """The query string of a link that keeps these filters."""
        fields = {**asdict(self), **extra}
        return urlencode({k: v for k, v in fields.items() if v})


def day_start(value: str | None, field: str, errors: list[str]) -> datetime | None:
    """A date (``YYYY-MM-DD``, as a date input sends it) as the start of that day in UTC; a full
    ISO 8601 timestamp is taken as given."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(), UTC)
        moment = datetime.fromisoformat(value)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    except ValueError:
        errors.append(f"“{field}” is not a date (YYYY-MM-DD).")
        return None


def blank_to_none(value: str | None) -> str | None:
    value = value.strip() if value is not None else None
    return value or None


def parse_filters(form: ListForm, dialect: str) -> tuple[ConversationFilter | None, int, list[str]]:
    """The store's filter and the page size for the form, or the problems to show next to it."""
    errors: list[str] = []
    limit = PAGE_SIZE
    if form.limit is not None:
        limit = int(form.limit) if form.limit.isdigit() else 0
        if not 1 <= limit <= max(PAGE_SIZES):
            errors.append(f"“Per page” must be a number from 1 to {max(PAGE_SIZES)}.")
    if form.q is not None and len(form.q) > MAX_QUERY_CHARS:
        errors.append(f"The search text is longer than {MAX_QUERY_CHARS} characters.")
    for label, value in (("Tenant", form.tenant), ("Model", form.model)):
        if value is not None and len(value) > MAX_NAME_CHARS:
            errors.append(f"{label} is longer than {MAX_NAME_CHARS} characters.")
    if form.status is not None and form.status not in STATUSES:
        errors.append(f"Status must be one of {', '.join(STATUSES)}.")
    after = day_start(form.created_after, "Created from", errors)
    before = day_start(form.created_before, "Created before", errors)
    if after and before and after >= before:
        errors.append("“Created from” must be earlier than “Created before”.")
    if errors:
        return None, PAGE_SIZE, errors
    return (
        ConversationFilter(
            tenant=form.tenant,
            model=form.model,
            q=form.q,
            created_after=after,
            created_before=before,
            status=form.status,
            dialect=dialect,
        ),
        limit,
        [],
    )


# ---- the stats chart ------------------------------------------------------------------------


def nice_ceiling(value: float) -> int:
    """The smallest of 1, 2, 5 times a power of ten that is at least ``value`` (axis tops)."""
    if value <= 1:
        return 1
    magnitude = int(10 ** math.floor(math.log10(value)))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= value)


CHART_HEIGHT = 180
PLOT_TOP = 10
PLOT_BOTTOM = 150  # baseline; day labels below it
PLOT_LEFT = 64
PLOT_WIDTH = 960  # the bars share this, so a month and a quarter fill the same space


def bar_chart(title: str, unit: str, days: list[str], values: dict[str, int]) -> dict[str, Any]:
    """An SVG bar chart's geometry, one bar per day: the template only draws it."""
    top = nice_ceiling(max([values.get(d, 0) for d in days], default=0))
    scale = (PLOT_BOTTOM - PLOT_TOP) / top
    step = max(4, min(40, PLOT_WIDTH // max(1, len(days))))
    bar_width = max(2, round(step * 0.7))
    bars = []
    for i, day in enumerate(days):
        value = values.get(day, 0)
        height = round(value * scale, 1)
        bars.append(
            {
                "x": PLOT_LEFT + i * step + (step - bar_width) / 2,
                "y": round(PLOT_BOTTOM - height, 1),
                "width": bar_width,
                "height": height,
                "day": day,
                "value": value,
                "label": f"{day}: {value:,} {unit}",
            }
        )
    width = PLOT_LEFT + len(days) * step + 8
    # Gridlines at 0, half way (when that is a whole number) and the top.
    levels = [0, top // 2, top] if top % 2 == 0 else [0, top]
    ticks = [{"y": round(PLOT_BOTTOM - v * scale, 1), "label": f"{v:,}"} for v in levels]
    every = max(1, len(days) // 7)
    labels = [
        {"x": PLOT_LEFT + i * step + step / 2, "text": days[i][5:]}
        for i in range(len(days) - 1, -1, -every)
    ]
    return {
        "title": title,
        "width": width,
        "height": CHART_HEIGHT,
        "left": PLOT_LEFT,
        "right": width - 8,
        "baseline": PLOT_BOTTOM,
        "label_y": PLOT_BOTTOM + 16,
        "bars": bars,
        "ticks": ticks,
        "labels": labels,
        "total": sum(values.get(d, 0) for d in days),
    }


def chart_days(by_day: list[dict[str, Any]], days: int, today: date) -> list[str]:
    """Every day of the period, oldest first, so days without turns show as gaps."""
    period = {(today - timedelta(days=i)).isoformat() for i in range(days + 1)}
    return sorted(period | {str(d["day"]) for d in by_day})


# ---- the pages ------------------------------------------------------------------------------


@dataclass
class SignInForm:
    """The sign-in form's fields: the key, the page to go on to, and the form's token."""

    key: str = ""
    next: str = ""
    csrf: str = ""


@dataclass
class SignOutForm:
    """The sign-out form's one field: the session's form token."""

    csrf: str = ""


NextPath = Annotated[str | None, QueryParameter(name="next")]
# Form fields arrive as text (an empty field as ""), and are checked here so that a bad value
# shows the form again instead of a JSON problem.
Field: TypeAlias = FromQuery[str | None]


class AdminPages(Controller):
    """The admin web pages. Each page needs the admin cookie and otherwise answers
    ``303`` to the sign-in form."""

    path = "/admin"
    include_in_schema = False
    dependencies = {"page_admin": Provide(provide_page_admin)}  # noqa: RUF012 - Litestar's API
    exception_handlers = {  # noqa: RUF012 - Litestar's API
        SignInRequired: redirect_to_sign_in,
        ServiceError: error_page,
    }
    response_headers = PAGE_HEADERS

    @get("/static/admin.css", sync_to_thread=False)
    def stylesheet(self) -> Response[bytes]:
        """The pages' stylesheet (no sign-in: it holds nothing private)."""
        return Response(
            STYLESHEET,
            media_type="text/css",
            headers={"cache-control": "public, max-age=31536000, immutable"},
        )

    @get("/login")
    async def login_form(
        self, request: Request[Any, Any, Any], state: State, next_path: NextPath = None
    ) -> Response[Any]:
        """The sign-in form; an admin already signed in goes straight on."""
        if await signed_in(request, state.store) is not None:
            return Redirect(safe_next(next_path) or HOME_PATH, status_code=303)
        return login_page(request, state.settings, next_path=safe_next(next_path))

    @post("/login", status_code=303, guards=[same_origin])
    async def login(
        self,
        request: Request[Any, Any, Any],
        state: State,
        data: Annotated[SignInForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    ) -> Response[Any]:
        """Check the key (it must be an admin key), start a session and set its cookie; a
        tenant key answers 403 and an unknown or revoked one 401, with the form shown again.
        The form must carry the token its page set in a cookie (403 otherwise)."""
        settings: Settings = state.settings
        next_path = safe_next(data.next)

        def again(error: str | None, status: int) -> Template:
            return login_page(request, settings, next_path=next_path, error=error, status=status)

        secure = cookie_secure(request, settings)
        if secure is None:
            return again(None, 403)  # the page says why, and what the operator can do
        if not same_token(data.csrf, request.cookies.get(CSRF_COOKIE)):
            return again("This sign-in form had expired. Enter the key again.", 403)
        key = data.key.strip()
        if not key:
            return again("Enter an admin key.", 401)
        store: Store = state.store
        principal = await store.authenticate(key) if len(key) <= MAX_KEY_CHARS else None
        if principal is None:
            return again("This key is unknown or revoked.", 401)
        if not principal.is_admin:
            return again("This is a tenant key. These pages need an admin key.", 403)
        session_id = await store.create_admin_session(principal.key_id, lifetime=SESSION_LIFETIME)
        return Redirect(
            next_path or HOME_PATH,
            status_code=303,
            cookies=[
                session_cookie(session_id, secure=secure),
                _cookie(CSRF_COOKIE, "", LOGIN_PATH, secure=secure, expire=True),
            ],
            headers={"cache-control": "no-store"},
        )

    @post("/logout", status_code=303, guards=[same_origin])
    async def logout(
        self,
        request: Request[Any, Any, Any],
        state: State,
        data: Annotated[SignOutForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    ) -> Response[Any]:
        """End the session (its id stops working at once), clear its cookie and show the
        sign-in form. The form must carry its page's token (403 otherwise)."""
        session = await signed_in(request, state.store)
        if session is not None:
            if not same_token(data.csrf, session.csrf):
                raise Forbidden(
                    "This sign-out form did not come from these pages. Sign out from a page."
                )
            await state.store.end_admin_session(session.session_id)
        return Redirect(
            LOGIN_PATH,
            status_code=303,
            cookies=[expired_cookie()],
            headers={"cache-control": "no-store"},
        )

    @get("/")
    async def conversations(
        self,
        page_admin: PageAdmin,
        state: State,
        q: Field = None,
        tenant: Field = None,
        model: Field = None,
        status: Field = None,
        created_after: Field = None,
        created_before: Field = None,
        limit: Field = None,
        cursor: Field = None,
    ) -> Template:
        """Every tenant's conversations, newest first, ``limit`` (25) a page: the filter form
        (``q`` text search, tenant, model, turn status, creation dates) and keyset "Next page"
        links that keep the filters. A bad filter shows the form with its problems (400)."""
        store: Store = state.store
        form = ListForm(
            q=blank_to_none(q),
            tenant=blank_to_none(tenant),
            model=blank_to_none(model),
            status=blank_to_none(status),
            created_after=blank_to_none(created_after),
            created_before=blank_to_none(created_before),
            limit=blank_to_none(limit),
        )
        filters, page_size, errors = parse_filters(form, store.dialect)
        rows: list[Any] = []
        next_cursor = None
        failed: set[uuid.UUID] = set()
        if filters is not None:
            rows, next_cursor = await store.admin_list(
                filters, limit=page_size, cursor=blank_to_none(cursor)
            )
            failed = await store.with_failed_turns([r.id for r in rows])
        return Template(
            "conversations.html",
            context=base_context(
                page_admin,
                form=form,
                statuses=STATUSES,
                page_sizes=sorted({*PAGE_SIZES, page_size}),
                page_size=page_size,
                errors=errors,
                rows=[conversation_view(r) | {"has_failed": r.id in failed} for r in rows],
                filtered=form.filtered,
                paged=bool(blank_to_none(cursor)),
                first_url=f"{HOME_PATH}?{form.query()}",
                next_url=f"{HOME_PATH}?{form.query(cursor=next_cursor)}" if next_cursor else None,
            ),
            status_code=400 if errors else 200,
        )

    @get("/c/{conversation_id:str}")
    async def conversation(
        self,
        page_admin: PageAdmin,
        state: State,
        conversation_id: FromPath[str],
        at: Field = None,
        reason: Field = None,
    ) -> Template:
        """One conversation read like a chat: the messages of its active path (or, with ``at``,
        of the path through that message and down its newest replies) in ``seq`` order, a
        pager on each message that has siblings, a mark where the conversation branches; then
        its turns (status, latency, usage, errors). 404 page if there is no such conversation
        or message. The read is recorded with ``reason``; where a reason is required and none
        is given, the page asks for one first (and its links carry it on)."""
        cid = conversation_uuid(conversation_id)
        through = message_uuid(at) if at else None
        settings: Settings = state.settings
        if settings.admin_reason_required and not (reason or "").strip():
            return Template(
                "reason.html",
                context=base_context(page_admin, action=f"/admin/c/{cid}", at=at),
            )
        reason = await record_page_read(state, page_admin, cid, reason)
        view = await state.store.path_view(cid, through)
        view_url = f"/admin/c/{cid}"
        keep = f"&{urlencode({'reason': reason})}" if reason else ""
        path_query = "" if view.active else f"?at={through}"
        if keep:
            path_query = f"{path_query}{keep}" if path_query else f"?{keep[1:]}"
        messages = [message_view(m, view_url, path_query, view, keep) for m in view.messages]
        for message, after in zip(messages, view.messages[1:], strict=False):
            message["replies"] = after.sibling_count or 1
        on_path = {str(m.id): m.seq for m in view.messages}
        turns = [turn_view(t) for t in view.turns]
        for turn in turns:
            reply = turn["reply_id"]
            turn["reply_url"] = (
                (f"#m-{on_path[reply]}" if reply in on_path else f"{view_url}?at={reply}{keep}")
                if reply
                else None
            )
        return Template(
            "conversation.html",
            context=base_context(
                page_admin,
                conversation=conversation_view(view.conversation),
                messages=messages,
                active=view.active,
                total=view.total,
                turns=turns,
                failed_turns=sum(1 for t in turns if t["status"] == "failed"),
                reason=reason,
                active_url=f"{view_url}?{keep[1:]}" if keep else view_url,
                download_url=f"{view_url}/download?{keep[1:]}" if keep else f"{view_url}/download",
            ),
        )

    @get("/c/{conversation_id:str}/m/{seq:int}")
    async def message_json(
        self,
        page_admin: PageAdmin,
        state: State,
        conversation_id: FromPath[str],
        seq: FromPath[int],
        at: Field = None,
        reason: Field = None,
    ) -> Response[bytes]:
        """One message as stored, as JSON (what the admin API gives for each message): all of
        what the conversation page cuts short. The message at ``seq`` on the path the page
        showed: the active path, or the one through ``at``. The read is recorded."""
        cid = conversation_uuid(conversation_id)
        through = message_uuid(at) if at else None
        await record_page_read(state, page_admin, cid, reason)
        # A number past any seq would overflow the database's integer: it names no message.
        in_range = 1 <= seq <= MAX_SEQ
        message = await state.store.message_at(cid, seq, through=through) if in_range else None
        if message is None:
            raise NotFound("This conversation has no message with this number.")
        return Response(msgspec.json.encode(message), media_type="application/json")

    @get("/c/{conversation_id:str}/download")
    async def download(
        self,
        page_admin: PageAdmin,
        state: State,
        conversation_id: FromPath[str],
        reason: Field = None,
    ) -> Response[bytes]:
        """The conversation's JSON transcript as a download (what
        ``GET /admin/conversations/{id}/export`` gives a bearer key). The read is recorded."""
        cid = conversation_uuid(conversation_id)
        await record_page_read(state, page_admin, cid, reason)
        rows = await state.store.export_one(None, cid)
        return Response(
            transcripts.encode(transcripts.build(rows)),
            media_type="application/json",
            headers=attachment(f"conversation-{cid}.json"),
        )

    @get("/dashboard")
    async def dashboard(self, page_admin: PageAdmin, state: State, days: Field = None) -> Template:
        """Counts of conversations, messages and turns, tokens by model and tenant, and bar
        charts (inline SVG) of turns and tokens per day over the last ``days`` days."""
        period_days = int(days) if days and days.isdigit() and 1 <= int(days) <= 366 else 30
        stats = await state.store.stats(days=period_days)
        period = chart_days(stats["by_day"], period_days, datetime.now(UTC).date())
        turns_by_day = {str(d["day"]): int(d["turns"]) for d in stats["by_day"]}
        tokens_by_day = {str(d["day"]): int(d["total_tokens"]) for d in stats["by_day"]}
        return Template(
            "stats.html",
            context=base_context(
                page_admin,
                stats=stats,
                days=period_days,
                day_choices=STAT_DAYS,
                total_turns=sum(stats["turns"].values()),
                total_tokens=sum(m["total_tokens"] for m in stats["tokens_by_model"]),
                charts=[
                    bar_chart("Turns per day", "turns", period, turns_by_day),
                    bar_chart("Tokens per day", "tokens", period, tokens_by_day),
                ],
            ),
        )


def login_page(
    request: Request[Any, Any, Any],
    settings: Settings,
    *,
    next_path: str | None,
    error: str | None = None,
    status: int = 200,
) -> Template:
    """The sign-in form, with the token it must send back set in a cookie of its own; or, where
    a browser would not keep the session cookie, why signing in cannot work here."""
    secure = cookie_secure(request, settings)
    token = request.cookies.get(CSRF_COOKIE) or ""
    if not TOKEN.fullmatch(token):
        token = secrets.token_urlsafe(32)
    return Template(
        "login.html",
        context=base_context(
            None,
            next=next_path,
            error=error,
            form_token=token,
            blocked=secure is None,
            host=request_host(request),
        ),
        status_code=status,
        cookies=[] if secure is None else [_cookie(CSRF_COOKIE, token, LOGIN_PATH, secure=secure)],
    )


async def record_page_read(
    state: State, session: PageSession, conversation_id: uuid.UUID, reason: str | None
) -> str | None:
    """Record the signed-in admin's read of a conversation on these pages, with the reason it
    gave (checked: a 400 page without one where one is required); the reason."""
    settings: Settings = state.settings
    store: Store = state.store
    given = admin_reason(reason, required=settings.admin_reason_required, where="the page's reason")
    read_by = ReadBy(session.principal.key_id, "page", given)
    await store.record_admin_reads(read_by, [conversation_id])
    return given


def same_token(sent: str | None, expected: str | None) -> bool:
    """Whether a form's token is the expected one (compared in constant time)."""
    if not sent or not expected:
        return False
    return hmac.compare_digest(sent.encode(), expected.encode())


def conversation_uuid(value: str) -> uuid.UUID:
    """The id in a page's path; a malformed one is as missing as an unknown one."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound("No conversation has this id.") from None


def message_uuid(value: str) -> uuid.UUID:
    """A message id in a page's query; a malformed one is as missing as an unknown one."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound("This conversation has no message with this id.") from None
