"""Settings are read once from the environment; a bad value stops start-up with a clear message."""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import os
import platform
from pathlib import Path

import pytest
from live import serve

from service.app import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, create_app, keep_freed_memory
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
        ("CONVSTORE_HISTORY_CACHE_MB", "-1", "CONVSTORE_HISTORY_CACHE_MB"),
        ("CONVSTORE_GC_THRESHOLD", "-1", "CONVSTORE_GC_THRESHOLD"),
        ("CONVSTORE_GC_THRESHOLD", "1e5", "CONVSTORE_GC_THRESHOLD"),
        ("CONVSTORE_MALLOC_KEEP_MB", "-1", "CONVSTORE_MALLOC_KEEP_MB"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, says: str) -> None:
    with pytest.raises(SettingsError, match=says):
        Settings.from_env({name: value})


def test_the_collector_threshold_depends_on_the_database_unless_set() -> None:
    assert Settings.from_env({}).collector_threshold == 0  # SQLite
    postgres = {"CONVSTORE_DATABASE_URL": "postgresql+asyncpg://u@h/db"}
    assert Settings.from_env(postgres).collector_threshold == 50_000
    chosen = {**postgres, "CONVSTORE_GC_THRESHOLD": "0"}
    assert Settings.from_env(chosen).collector_threshold == 0
    assert Settings.from_env({"CONVSTORE_GC_THRESHOLD": "900"}).collector_threshold == 900


async def test_the_collector_threshold_holds_while_the_app_runs(settings: Settings) -> None:
    before = gc.get_threshold()
    tuned = dataclasses.replace(settings, gc_threshold=before[0] + 12_345)
    async with serve(create_app(tuned)) as http:
        assert (await http.get("/health")).status_code == 200
        assert gc.get_threshold() == (before[0] + 12_345, *before[1:])
    assert gc.get_threshold() == before
    untouched = dataclasses.replace(settings, gc_threshold=0)
    async with serve(create_app(untouched)) as http:
        assert (await http.get("/health")).status_code == 200
        assert gc.get_threshold() == before


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(
    not Path("/proc/self/statm").exists() or platform.libc_ver()[0] != "glibc",
    reason="malloc tuning is glibc's (Linux); elsewhere keep_freed_memory changes nothing",
)
def test_freed_memory_is_kept_for_reuse_once_asked() -> None:
    size = 16 * 2**20
    # The C library's way: a block this large is mapped afresh, and unmapped when freed.
    assert ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    assert ctypes.CDLL(None).mallopt(M_TRIM_THRESHOLD, 128 * 1024)
    block = b"x" * size
    held = resident_bytes()
    del block
    assert held - resident_bytes() > size * 0.9  # given back at once
    assert keep_freed_memory(64)
    block = b"x" * size
    held = resident_bytes()
    del block
    assert held - resident_bytes() < size * 0.1  # kept: the next large block reuses it
    assert not keep_freed_memory(0)


def test_the_memory_kept_is_a_setting() -> None:
    assert Settings.from_env({}).malloc_keep_mb == 64
    assert Settings.from_env({"CONVSTORE_MALLOC_KEEP_MB": "0"}).malloc_keep_mb == 0
