"""The TypeScript client in clients/typescript: its OpenAPI document is the one the service
serves (regenerate with ``npm run generate`` there), and its own Node tests pass against a live
server on each database (create, turn, stream, list, list by end user, export)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.openapi import complete
from service.settings import Settings

CLIENT = Path(__file__).resolve().parent.parent / "clients" / "typescript"


def test_the_client_is_generated_from_the_served_document() -> None:
    served = complete(create_app(Settings()).openapi_schema.to_schema())
    kept = json.loads((CLIENT / "openapi.json").read_text(encoding="utf-8"))
    assert kept == served, (
        "clients/typescript is out of date: run `npm run generate` in clients/typescript"
    )


def _node_ready() -> None:
    missing = []
    if shutil.which("npm") is None:
        missing.append("npm")
    if not (CLIENT / "node_modules" / ".bin" / "tsc").exists():
        missing.append("clients/typescript/node_modules (run `npm ci` there)")
    if not missing:
        return
    reason = "the TypeScript client's test needs " + " and ".join(missing)
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(reason)
    pytest.skip(reason)


async def test_the_node_tests_pass_against_a_live_server(
    client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    _node_ready()
    env = {
        **os.environ,
        "CONVSTORE_URL": str(client.base_url).rstrip("/"),
        "CONVSTORE_KEY": alice["Authorization"].removeprefix("Bearer "),
    }
    process = await asyncio.create_subprocess_exec(
        "npm",
        "test",
        cwd=CLIENT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=300)
    report = output.decode(errors="replace")
    assert process.returncode == 0, report
    assert "# fail 0" in report, report
    assert "# pass 6" in report, report
