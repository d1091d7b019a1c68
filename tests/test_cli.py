"""The `convstore` command, run as a user would, in a fresh directory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

CONVSTORE = [sys.executable, "-m", "service.cli"]


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CONVSTORE_")}
    environment["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    environment.update(env or {})
    result = subprocess.run(
        [*CONVSTORE, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_keys_create_list_limit_revoke(tmp_path: Path) -> None:
    created = run(["keys", "create", "--tenant", "acme"], tmp_path)
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("cs_")
    assert (tmp_path / "convstore.db").exists()  # no setting: the SQLite file here
    # Which database a command uses is said on standard error, and that it was new.
    assert f"SQLite file {tmp_path.resolve() / 'convstore.db'} (new)" in created.stderr
    admin = run(
        ["keys", "create", "--tenant", "ops", "--admin", "--turns-per-minute", "60"], tmp_path
    )
    assert "admin key" in admin.stdout
    assert "at most 60 turns a minute" in admin.stdout
    assert "(new)" not in admin.stderr

    listing = run(["keys", "list"], tmp_path).stdout
    assert "acme" in listing
    assert "ops" in listing
    assert key not in listing  # the key itself is never shown again
    assert key[:10] in listing
    ops_line = next(line for line in listing.splitlines() if "ops" in line)
    assert " 60 " in ops_line
    key_id = created.stdout.split()[2]

    limited = run(["keys", "limit", key[:10], "--turns-per-minute", "30"], tmp_path).stdout
    assert key_id in limited
    assert "at most 30 turns a minute" in limited
    lifted = run(["keys", "limit", key_id, "--turns-per-minute", "0"], tmp_path).stdout
    assert "no limit" in lifted

    assert "Revoked" in run(["keys", "revoke", key[:10]], tmp_path).stdout  # by its prefix
    again = run(["keys", "revoke", key_id], tmp_path, check=False)
    assert again.returncode != 0
    assert "already revoked" in again.stderr
    bad = run(["keys", "revoke", "not-a-key"], tmp_path, check=False)
    assert bad.returncode != 0
    assert "no key has the id or prefix 'not-a-key'" in bad.stderr


def test_openapi_writes_the_served_document(tmp_path: Path) -> None:
    """``convstore openapi`` writes the document ``/schema/openapi.json`` serves, with no
    database and no server."""
    from service.app import create_app
    from service.openapi import complete
    from service.settings import Settings

    run(["openapi", "--output", "openapi.json"], cwd=tmp_path)
    written = json.loads((tmp_path / "openapi.json").read_text(encoding="utf-8"))
    assert written == complete(create_app(Settings()).openapi_schema.to_schema())
    assert "/v1/conversations/{conversation_id}/turns" in written["paths"]
    assert not list(tmp_path.glob("*.db"))  # no database was made
    printed = run(["openapi"], cwd=tmp_path).stdout
    assert json.loads(printed) == written


def test_a_sqlite_file_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/missing/dir/x.db"
    result = run(["keys", "list"], tmp_path, env={"CONVSTORE_DATABASE_URL": url}, check=False)
    assert result.returncode != 0
    assert "not an existing directory" in result.stderr
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "99999 is out of range (from 0 to 65535)"),
        (["--port", "-1"], "out of range"),
        (["--workers", "0"], "0 is out of range (1 or more)"),
        (["--workers", "-1"], "out of range"),
    ],
)
def test_serve_refuses_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    result = run(["serve", *args], tmp_path, check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert "listening" not in result.stdout


def test_serve_on_a_port_in_use_says_so_before_anything_else(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(["serve", "--port", str(port)], tmp_path, check=False)
    assert result.returncode != 0
    assert "listening" not in result.stdout
    assert "address already in use" in result.stderr.lower()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CONVSTORE_DATABASE_URL", "mysql://nope"),
        ("CONVSTORE_UPSTREAM_TIMEOUT", "forever"),
        ("ALL_PROXY", "socks5://127.0.0.1:1080"),
    ],
)
def test_bad_setting_stops_start_up_with_a_clear_message(
    tmp_path: Path, name: str, value: str
) -> None:
    result = run(["serve", "--port", str(free_port())], tmp_path, env={name: value}, check=False)
    assert result.returncode != 0
    assert "bad setting" in result.stderr
    assert name in result.stderr


def test_commands_that_do_not_call_the_upstream_ignore_its_proxy(tmp_path: Path) -> None:
    created = run(
        ["keys", "create", "--tenant", "acme"], tmp_path, env={"ALL_PROXY": "socks5://h:1080"}
    )
    assert created.stdout.strip().splitlines()[-1].startswith("cs_")


def test_serve_on_a_fresh_machine(tmp_path: Path) -> None:
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CONVSTORE_")}
    environment["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    server = subprocess.Popen(
        [*CONVSTORE, "serve", "--port", str(port)],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail("the server did not become ready")
        assert httpx.get(f"http://127.0.0.1:{port}/health").json() == {"status": "ok"}
        assert httpx.get(f"http://127.0.0.1:{port}/v1/conversations").status_code == 401
        assert "paths" in httpx.get(f"http://127.0.0.1:{port}/schema/openapi.json").json()
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert f"listening on http://127.0.0.1:{port}" in output
    assert "newest schema" in output
    assert (tmp_path / "convstore.db").exists()


@pytest.mark.usefixtures("store")  # empties the database afterwards
def test_export_and_import_round_trip(tmp_path: Path, database_url: str) -> None:
    env = {"CONVSTORE_DATABASE_URL": database_url}
    transcript = {
        "format": "convstore.transcript",
        "version": 1,
        "conversation": {
            "id": f"cli-src-{time.time_ns()}",
            "title": "from a file",
            "model": "grok-4",
            "params": {},
            "metadata": {},
        },
        "messages": [
            {"seq": 1, "role": "system", "content": "s"},
            {"seq": 2, "role": "user", "content": "u"},
        ],
        "turns": [],
    }
    source = tmp_path / "in.ndjson"
    source.write_text(json.dumps(transcript) + "\n" + "{broken\n")
    result = run(["import", str(source), "--tenant", "cli"], tmp_path, env=env, check=False)
    assert result.returncode == 1  # one line failed, and the summary says so
    assert "Imported 1 conversation for tenant 'cli'; 0 were already imported, 1 failed." in (
        result.stderr
    )
    assert "line 2: Not valid JSON" in result.stderr

    source.write_text(json.dumps(transcript) + "\n")
    again = run(["import", str(source), "--tenant", "cli"], tmp_path, env=env)
    assert "Imported 0 conversations for tenant 'cli'; 1 was already imported, 0 failed." in (
        again.stderr
    )

    out = tmp_path / "out.ndjson"
    exported = run(["export", "--tenant", "cli", "--out", str(out)], tmp_path, env=env)
    assert "Exported 1 conversation (2 messages)" in exported.stderr
    (line,) = out.read_text().splitlines()
    back = json.loads(line)
    assert back["conversation"]["title"] == "from a file"
    assert back["conversation"]["source_id"] == transcript["conversation"]["id"]
    assert [(m["role"], m["content"]) for m in back["messages"]] == [("system", "s"), ("user", "u")]


@pytest.mark.usefixtures("store")  # empties the database afterwards
def test_import_shows_every_problem(tmp_path: Path, database_url: str) -> None:
    env = {"CONVSTORE_DATABASE_URL": database_url}
    bad = {
        "format": "convstore.transcript",
        "version": 1,
        "conversation": {"id": f"cli-bad-{time.time_ns()}"},
        "messages": [{"seq": i + 1, "role": "wizard", "content": "x"} for i in range(25)],
    }
    few = {**bad, "messages": bad["messages"][:2]}
    source = tmp_path / "bad.ndjson"
    source.write_text(json.dumps(bad) + "\n" + json.dumps(few) + "\n")
    result = run(["import", str(source), "--tenant", "cli"], tmp_path, env=env, check=False)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    first = lines.index("  line 1: 25 problems:")
    shown = lines[first + 1 : first + 21]
    assert shown == [f"      $.messages[{i}].role: \"wizard\" is not one of \"system\", "
                     f"\"user\" or 2 other candidates" for i in range(20)]  # fmt: skip
    assert lines[first + 21] == "      … and 5 more"
    second = lines.index("  line 2: 2 problems:")
    assert lines[second + 1].startswith("      $.messages[0].role: ")
    assert lines[second + 2].startswith("      $.messages[1].role: ")
    assert "Imported 0 conversations for tenant 'cli'; 0 were already imported, 2 failed." in (
        result.stderr
    )


@pytest.mark.usefixtures("store")  # empties the database afterwards
def test_import_from_chatgpt_names_the_refused_conversations(
    tmp_path: Path, database_url: str
) -> None:
    env = {"CONVSTORE_DATABASE_URL": database_url}
    stamp = time.time_ns()

    def chat(name: str, text: str) -> dict[str, object]:
        message = {
            "id": "m1",
            "author": {"role": "user"},
            "content": {"content_type": "text", "parts": [text]},
        }
        return {
            "conversation_id": f"{name}-{stamp}",
            "title": name,
            "create_time": 1_764_000_000,
            "current_node": "n1",
            "mapping": {"n1": {"id": "n1", "parent": None, "message": message}},
        }

    source = tmp_path / "conversations.json"
    source.write_text(json.dumps([chat("short", "hi"), chat("long", "y" * 1_000_001)]))
    result = run(
        ["import", str(source), "--from", "chatgpt", "--tenant", "cli"], tmp_path, env=env,
        check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"  conversation 'long' (chatgpt:long-{stamp}) refused: 1 problem:" in result.stderr
    assert (
        "      $.messages[0].content: is 1,000,001 characters long; at most 1,000,000 are allowed"
        in result.stderr
    )
    assert "Imported 1 conversation for tenant 'cli'; 0 were already imported, 1 failed." in (
        result.stderr
    )
