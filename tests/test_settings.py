"""Settings are read once from the environment; a bad value stops start-up with a clear message."""

from __future__ import annotations

import pytest

from service.settings import DEFAULT_DATABASE_URL, Settings, SettingsError


def test_defaults_need_no_setting() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.upstream_url == "https://api.x.ai/v1"
    assert settings.default_model == "grok-4"
    assert settings.upstream_timeout == 3600
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
        }
    )
    assert settings.database_url == "postgresql+asyncpg://u@h/db"
    assert settings.upstream_url == "http://127.0.0.1:9100/v1"
    assert settings.xai_api_key == "xai-123"
    assert settings.default_model == "grok-4.3"
    assert settings.upstream_timeout == 12.5


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
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, says: str) -> None:
    with pytest.raises(SettingsError, match=says):
        Settings.from_env({name: value})


def test_admin_insecure_cookies_is_a_flag() -> None:
    assert Settings.from_env({}).admin_insecure_cookies is False
    for value, flag in (("1", True), ("true", True), ("0", False), ("", False)):
        settings = Settings.from_env({"CONVSTORE_ADMIN_INSECURE_COOKIES": value})
        assert settings.admin_insecure_cookies is flag
