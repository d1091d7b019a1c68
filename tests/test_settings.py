"""Settings are read once from the environment; a bad value stops start-up with a clear message."""

from __future__ import annotations

import pytest

from service.settings import (
    DEFAULT_DATABASE_URL,
    DEFAULT_UPSTREAM_URL,
    Settings,
    SettingsError,
    check_upstream_proxy,
)


def test_defaults_need_no_setting() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.upstream_url == "https://api.x.ai/v1"
    assert settings.default_model == "grok-4"
    assert settings.upstream_timeout == 3600
    assert settings.upstream_max_connections == 10_000
    assert settings.max_reply_chars == 2_000_000
    assert settings.xai_api_key is None
    assert "secret" not in repr(Settings(xai_api_key="secret"))


def test_values_are_read() -> None:
    settings = Settings.from_env(
        {
            "CONVSTORE_DATABASE_URL": "postgresql+asyncpg://u@h/db",
            "CONVSTORE_UPSTREAM_URL": "http://127.0.0.1:9100/v1",
            "XAI_API_KEY": "xai-123",
            "CONVSTORE_DEFAULT_MODEL": "grok-4.3",
            "CONVSTORE_UPSTREAM_TIMEOUT": "12.5",
            "CONVSTORE_UPSTREAM_MAX_CONNECTIONS": "500",
            "CONVSTORE_MAX_REPLY_CHARS": "100000",
            "CONVSTORE_DB_TRANSACTION_POOLER": "1",
            "CONVSTORE_READ_DATABASE_URL": "postgresql+asyncpg://u@replica/db",
        }
    )
    assert settings.database_url == "postgresql+asyncpg://u@h/db"
    assert settings.upstream_url == "http://127.0.0.1:9100/v1"
    assert settings.xai_api_key == "xai-123"
    assert settings.default_model == "grok-4.3"
    assert settings.upstream_timeout == 12.5
    assert settings.upstream_max_connections == 500
    assert settings.max_reply_chars == 100_000
    assert settings.db_transaction_pooler is True
    assert settings.read_database_url == "postgresql+asyncpg://u@replica/db"


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("CONVSTORE_DATABASE_URL", "mysql://x/y", "postgresql[+]asyncpg"),
        ("CONVSTORE_DATABASE_URL", "not a url", "CONVSTORE_DATABASE_URL"),
        ("CONVSTORE_DATABASE_URL", "sqlite+aiosqlite:///:memory:", "SQLite file"),
        ("CONVSTORE_DATABASE_URL", "sqlite+aiosqlite://", "SQLite file"),
        ("CONVSTORE_UPSTREAM_URL", "ftp://x", "CONVSTORE_UPSTREAM_URL"),
        ("CONVSTORE_UPSTREAM_TIMEOUT", "soon", "CONVSTORE_UPSTREAM_TIMEOUT"),
        ("CONVSTORE_UPSTREAM_TIMEOUT", "-1", "CONVSTORE_UPSTREAM_TIMEOUT"),
        ("CONVSTORE_UPSTREAM_TIMEOUT", "nan", "CONVSTORE_UPSTREAM_TIMEOUT"),
        ("CONVSTORE_DEFAULT_MODEL", " ", "CONVSTORE_DEFAULT_MODEL"),
        ("CONVSTORE_DB_POOL_SIZE", "2.5", "CONVSTORE_DB_POOL_SIZE"),
        ("CONVSTORE_DATABASE_URL", "sqlite+aiosqlite:////nonexistent/dir/x.db", "/nonexistent"),
        ("CONVSTORE_TURN_RATE_LIMIT", "1200", "--turns-per-minute"),
        ("CONVSTORE_ADMIN_INSECURE_COOKIES", "maybe", "CONVSTORE_ADMIN_INSECURE_COOKIES"),
        ("CONVSTORE_UPSTREAM_MAX_CONNECTIONS", "0", "CONVSTORE_UPSTREAM_MAX_CONNECTIONS"),
        ("CONVSTORE_UPSTREAM_MAX_CONNECTIONS", "many", "CONVSTORE_UPSTREAM_MAX_CONNECTIONS"),
        ("CONVSTORE_MAX_REPLY_CHARS", "0", "CONVSTORE_MAX_REPLY_CHARS"),
        ("CONVSTORE_MAX_REPLY_CHARS", "1e6", "CONVSTORE_MAX_REPLY_CHARS"),
        # A pooler setting for a SQLite file is a mistake in the deployment.
        ("CONVSTORE_DB_TRANSACTION_POOLER", "1", "CONVSTORE_DB_TRANSACTION_POOLER"),
        ("CONVSTORE_DB_TRANSACTION_POOLER", "yes please", "CONVSTORE_DB_TRANSACTION_POOLER"),
        # A read replica is PostgreSQL's, of a PostgreSQL database.
        ("CONVSTORE_READ_DATABASE_URL", "postgresql+asyncpg://u@h/db", "CONVSTORE_READ_DATABASE"),
        ("CONVSTORE_READ_DATABASE_URL", "nonsense", "CONVSTORE_READ_DATABASE_URL"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, says: str) -> None:
    with pytest.raises(SettingsError, match=says):
        Settings.from_env({name: value})


def test_a_read_replica_must_be_postgresql() -> None:
    with pytest.raises(SettingsError, match="CONVSTORE_READ_DATABASE_URL"):
        Settings.from_env(
            {
                "CONVSTORE_DATABASE_URL": "postgresql+asyncpg://u@h/db",
                "CONVSTORE_READ_DATABASE_URL": "sqlite+aiosqlite:///x.db",
            }
        )


def test_admin_insecure_cookies_is_a_flag() -> None:
    assert Settings.from_env({}).admin_insecure_cookies is False
    for value, flag in (("1", True), ("true", True), ("0", False), ("", False)):
        settings = Settings.from_env({"CONVSTORE_ADMIN_INSECURE_COOKIES": value})
        assert settings.admin_insecure_cookies is flag


@pytest.mark.parametrize(
    "proxy",
    [
        {"ALL_PROXY": "socks5://127.0.0.1:1080"},
        {"all_proxy": "socks5h://user:secret@proxy.test:1080"},
        {"HTTPS_PROXY": "socks4://127.0.0.1:1080"},
        {"https_proxy": "socks5://127.0.0.1:1080", "HTTPS_PROXY": "http://127.0.0.1:3128"},
    ],
)
def test_a_socks_proxy_for_the_upstream_stops_start_up(proxy: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match=r"(?i)_proxy names a socks.*not socks") as caught:
        check_upstream_proxy(DEFAULT_UPSTREAM_URL, proxy)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    "proxy",
    [
        {"HTTPS_PROXY": "http://127.0.0.1:3128", "ALL_PROXY": "socks5://127.0.0.1:1080"},
        {"HTTP_PROXY": "socks5://127.0.0.1:1080"},  # the upstream is https
        {"ALL_PROXY": "socks5://127.0.0.1:1080", "NO_PROXY": "example.com,.x.ai"},
        {"all_proxy": "socks5://127.0.0.1:1080", "no_proxy": "*"},
        {"HTTPS_PROXY": "https://proxy.test:3128"},
        {"HTTPS_PROXY": "proxy.test:3128"},
    ],
)
def test_proxies_the_upstream_does_not_take_or_can_use_are_accepted(
    proxy: dict[str, str],
) -> None:
    check_upstream_proxy(DEFAULT_UPSTREAM_URL, proxy)
