"""Settings, read once from ``CONVSTORE_*`` environment variables at start-up."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]  # no stub

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from service.tokens import MODEL_WINDOWS

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./convstore.db"
DEFAULT_UPSTREAM_URL = "https://api.x.ai/v1"
# The upstream endpoints a turn can call: xAI's chat completions, or its Responses API (stateless).
UPSTREAM_APIS = ("chat_completions", "responses")
# The upstream client (httpx over aiohttp) speaks to HTTP and HTTPS proxies only.
PROXY_SCHEMES = ("http", "https")
MAX_RETENTION_DAYS = 365_000  # a thousand years: past it, dates leave the range stored


class SettingsError(ValueError):
    """A setting has a value the service cannot run with; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service is configured with; see the README's configuration table."""

    database_url: str = DEFAULT_DATABASE_URL
    # A streaming replica of the database, for the reads that may lag (lists, search, exports,
    # admin reads and stats); None reads everything from the database.
    read_database_url: str | None = None
    upstream_url: str = DEFAULT_UPSTREAM_URL
    upstream_api: str = "chat_completions"
    xai_api_key: str | None = field(default=None, repr=False)
    default_model: str = "grok-4"
    upstream_timeout: float = 3600.0
    upstream_connect_timeout: float = 10.0
    upstream_max_retries: int = 2
    upstream_retry_deadline: float = 60.0
    # Connections to the upstream, in use and kept: each running turn holds one, a streamed
    # turn of a reasoning model for minutes.
    upstream_max_connections: int = 10_000
    max_reply_chars: int = 2_000_000
    db_pool_size: int = 20
    # The database URLs lead to a pooler in transaction mode (PgBouncer): no named prepared
    # statements, since the next transaction may run on another server connection.
    db_transaction_pooler: bool = False
    turn_lease: float = 60.0
    key_cache_ttl: float = 5.0
    log_level: str = "INFO"
    # The admin pages' session cookie without `Secure` over plain http (a trusted network only).
    admin_insecure_cookies: bool = False
    # Conversations older than this many days (without an `expires_at` of their own) are
    # deleted; 0 keeps them until deleted.
    retention_days: int = 0
    # Admin reads of a conversation's messages must give a reason (X-Admin-Reason).
    admin_reason_required: bool = False
    # Context windows by model, tokens: the defaults of service.tokens, changed or added to.
    model_windows: Mapping[str, int] = field(default_factory=lambda: dict(MODEL_WINDOWS))
    # Keep each turn's exact upstream request body (for replay).
    keep_requests: bool = False
    # The model that writes summaries under `compact` (None: the conversation's).
    compaction_model: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``environ`` (default ``os.environ``).

        Raises ``SettingsError`` with a message naming the variable for any bad value.
        """
        env = os.environ if environ is None else environ
        if env.get("CONVSTORE_TURN_RATE_LIMIT", "0").strip() not in ("", "0"):
            raise SettingsError(
                "CONVSTORE_TURN_RATE_LIMIT is no longer read: a limit of turns a minute belongs "
                "to an API key (convstore keys create --turns-per-minute N, or keys limit)"
            )
        settings = cls(
            database_url=env.get("CONVSTORE_DATABASE_URL", DEFAULT_DATABASE_URL),
            read_database_url=env.get("CONVSTORE_READ_DATABASE_URL") or None,
            upstream_url=env.get("CONVSTORE_UPSTREAM_URL", DEFAULT_UPSTREAM_URL),
            upstream_api=env.get("CONVSTORE_UPSTREAM_API", "").strip().lower()
            or "chat_completions",
            xai_api_key=env.get("XAI_API_KEY") or None,
            default_model=env.get("CONVSTORE_DEFAULT_MODEL", "grok-4"),
            upstream_timeout=_number(env, "CONVSTORE_UPSTREAM_TIMEOUT", 3600.0),
            upstream_connect_timeout=_number(env, "CONVSTORE_UPSTREAM_CONNECT_TIMEOUT", 10.0),
            upstream_max_retries=int(_number(env, "CONVSTORE_UPSTREAM_MAX_RETRIES", 2, whole=True)),
            upstream_retry_deadline=_number(env, "CONVSTORE_UPSTREAM_RETRY_DEADLINE", 60.0),
            upstream_max_connections=int(
                _number(env, "CONVSTORE_UPSTREAM_MAX_CONNECTIONS", 10_000, whole=True)
            ),
            max_reply_chars=int(_number(env, "CONVSTORE_MAX_REPLY_CHARS", 2_000_000, whole=True)),
            db_pool_size=int(_number(env, "CONVSTORE_DB_POOL_SIZE", 20, whole=True)),
            db_transaction_pooler=_flag(env, "CONVSTORE_DB_TRANSACTION_POOLER"),
            turn_lease=_number(env, "CONVSTORE_TURN_LEASE", 60.0),
            key_cache_ttl=_number(env, "CONVSTORE_KEY_CACHE_TTL", 5.0),
            log_level=env.get("CONVSTORE_LOG_LEVEL", "INFO").upper(),
            admin_insecure_cookies=_flag(env, "CONVSTORE_ADMIN_INSECURE_COOKIES"),
            retention_days=int(_number(env, "CONVSTORE_RETENTION_DAYS", 0, whole=True)),
            admin_reason_required=_flag(env, "CONVSTORE_ADMIN_REASON_REQUIRED"),
            model_windows={**MODEL_WINDOWS, **_windows(env, "CONVSTORE_MODEL_WINDOWS")},
            keep_requests=_flag(env, "CONVSTORE_KEEP_REQUESTS"),
            compaction_model=env.get("CONVSTORE_COMPACTION_MODEL") or None,
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ``SettingsError`` if any value is unusable."""
        try:
            url = make_url(self.database_url)
        except ArgumentError as exc:
            raise SettingsError(
                f"CONVSTORE_DATABASE_URL is not a database URL: {self.database_url!r}"
            ) from exc
        if url.drivername not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
            raise SettingsError(
                "CONVSTORE_DATABASE_URL must use sqlite+aiosqlite:// or postgresql+asyncpg://, "
                f"not {url.drivername}://"
            )
        if url.drivername.startswith("sqlite") and url.database in (None, "", ":memory:"):
            # Each of the service's connections would get an empty database of its own.
            raise SettingsError(
                "CONVSTORE_DATABASE_URL must name a SQLite file (sqlite+aiosqlite:///path.db): "
                "an in-memory database is not shared by the service's connections"
            )
        if url.drivername.startswith("sqlite") and url.database:
            folder = Path(url.database).expanduser().resolve().parent
            if not folder.is_dir():
                raise SettingsError(
                    f"CONVSTORE_DATABASE_URL names a SQLite file in {folder}, which is not an "
                    "existing directory"
                )
        if self.read_database_url is not None:
            self._validate_read_database_url(url.drivername)
        if self.db_transaction_pooler and url.drivername != "postgresql+asyncpg":
            raise SettingsError(
                "CONVSTORE_DB_TRANSACTION_POOLER is for PostgreSQL behind a pooler; "
                "CONVSTORE_DATABASE_URL is not a postgresql+asyncpg:// URL"
            )
        upstream = urlsplit(self.upstream_url)
        if upstream.scheme not in ("http", "https") or not upstream.netloc:
            raise SettingsError(
                f"CONVSTORE_UPSTREAM_URL must be an http(s) URL, not {self.upstream_url!r}"
            )
        if self.upstream_api not in UPSTREAM_APIS:
            raise SettingsError(
                "CONVSTORE_UPSTREAM_API must be chat_completions or responses, "
                f"not {self.upstream_api!r}"
            )
        if not self.default_model.strip():
            raise SettingsError("CONVSTORE_DEFAULT_MODEL must not be empty")
        if self.upstream_timeout <= 0 or self.upstream_connect_timeout <= 0:
            raise SettingsError("CONVSTORE_UPSTREAM_TIMEOUT must be a positive number of seconds")
        if self.upstream_max_retries < 0:
            raise SettingsError("CONVSTORE_UPSTREAM_MAX_RETRIES must be 0 or more")
        if self.key_cache_ttl < 0:
            raise SettingsError("CONVSTORE_KEY_CACHE_TTL must be 0 or more seconds")
        if self.turn_lease < 1:
            raise SettingsError("CONVSTORE_TURN_LEASE must be at least 1 second")
        if self.upstream_max_connections < 1:
            raise SettingsError("CONVSTORE_UPSTREAM_MAX_CONNECTIONS must be at least 1")
        if self.max_reply_chars < 1:
            raise SettingsError("CONVSTORE_MAX_REPLY_CHARS must be at least 1")
        if self.db_pool_size < 1:
            raise SettingsError("CONVSTORE_DB_POOL_SIZE must be at least 1")
        if not 0 <= self.retention_days <= MAX_RETENTION_DAYS:
            raise SettingsError(
                f"CONVSTORE_RETENTION_DAYS must be 0 (off) to {MAX_RETENTION_DAYS} days"
            )
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError("CONVSTORE_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")

    def _validate_read_database_url(self, primary_driver: str) -> None:
        try:
            driver = make_url(self.read_database_url or "").drivername
        except ArgumentError as exc:
            raise SettingsError(
                f"CONVSTORE_READ_DATABASE_URL is not a database URL: {self.read_database_url!r}"
            ) from exc
        if driver != "postgresql+asyncpg" or primary_driver != driver:
            raise SettingsError(
                "CONVSTORE_READ_DATABASE_URL is a PostgreSQL replica of the database "
                "(postgresql+asyncpg://), for a CONVSTORE_DATABASE_URL that is PostgreSQL too"
            )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def check_upstream_proxy(upstream_url: str, environ: Mapping[str, str]) -> None:
    """Raise ``SettingsError`` if the environment routes the upstream through a proxy the
    upstream client cannot use (SOCKS): better at start-up than on every turn. Checked where
    the upstream is called from (``convstore serve``, ``make_http_client``), not by every
    command that reads the settings.

    The variables are read as httpx reads them (``urllib.request.getproxies``): the scheme's
    own (``HTTPS_PROXY`` for an https upstream), else ``ALL_PROXY``, a lower-case name before
    an upper-case one; none for a host that ``NO_PROXY`` names."""
    proxies: dict[str, tuple[str, str]] = {}
    for lower_only in (False, True):
        for name, value in environ.items():
            if name.lower().endswith("_proxy") and (name[-6:] == "_proxy" or not lower_only):
                if value:
                    proxies[name[:-6].lower()] = (name, value)
                elif lower_only:
                    proxies.pop(name[:-6].lower(), None)
    upstream = urlsplit(upstream_url)
    chosen = proxies.get(upstream.scheme) or proxies.get("all")
    no_proxy = proxies.get("no", ("", ""))[1]
    if chosen is None or (
        no_proxy and proxy_bypass_environment(upstream.hostname or "", {"no": no_proxy})
    ):
        return
    name, value = chosen
    proxy = urlsplit(value if "://" in value else f"http://{value}")
    if proxy.scheme.lower() not in PROXY_SCHEMES:
        where = f"{proxy.hostname}:{proxy.port}" if proxy.port else proxy.hostname
        raise SettingsError(
            f"{name} names a {proxy.scheme}:// proxy ({where}), which the upstream client "
            "cannot use: only http:// and https:// proxies are supported, not SOCKS. Unset "
            "it, give an HTTP proxy, or name the upstream's host in NO_PROXY."
        )


def _number(env: Mapping[str, str], name: str, default: float, *, whole: bool = False) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise SettingsError(f"{name} must be {kind}, not {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise SettingsError(f"{name} must be a finite number, not {raw!r}")
    return value


def _windows(env: Mapping[str, str], name: str) -> dict[str, int]:
    """Context windows by model, as a JSON object of model names to whole numbers of tokens."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and type(v) is int and v > 0 for k, v in value.items()
    ):
        raise SettingsError(
            f'{name} must be a JSON object of model names to token counts, like {{"grok-4": '
            f"256000}}, not {raw!r}"
        )
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name} must be 1 or 0, not {env.get(name)!r}")
