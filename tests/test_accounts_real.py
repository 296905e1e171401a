"""`papaya-trio user add/list/remove` as real processes, and token logins to real servers in
both modes (trio and fork) over loopback sockets."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from papaya_trio.accounts import read_entries
from tests.real_server import ServerFactory

DEADLINE = 20.0


def user_command(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "papaya_trio", "user", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def hello(port: int, **fields: Any) -> list[dict[str, Any]]:
    """Say hello on a fresh connection, ask for history, and return the first two answers
    (or the refusal alone)."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        lines = [json.dumps({"type": "hello", **fields}), '{"type":"ping","id":"p"}']
        sock.sendall("\n".join(lines).encode() + b"\n")
        answers: list[dict[str, Any]] = []
        buffer = b""
        while len(answers) < 2:
            data = sock.recv(65536)
            if not data:
                break
            buffer += data
            *complete, buffer = buffer.split(b"\n")
            answers += [json.loads(line) for line in complete]
        return answers


def test_user_commands_keep_only_a_salted_hash_owner_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    added = user_command(data_dir, "add", "alice")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert len(token) >= 43 and "alice" in added.stderr
    stored = (data_dir / "users.json").read_text()
    assert token not in stored and "alice" in stored
    assert stat.S_IMODE((data_dir / "users.json").stat().st_mode) == 0o600
    entry = read_entries(data_dir / "users.json")["alice"]
    assert entry.matches(token) and not entry.matches(token[:-1] + "x")
    again = user_command(data_dir, "add", "alice")
    assert again.returncode == 2 and "already exists" in again.stderr
    assert user_command(data_dir, "add", "bad name").returncode == 2
    assert user_command(data_dir, "add", "bob").returncode == 0
    assert user_command(data_dir, "list").stdout.split() == ["alice", "bob"]
    assert user_command(data_dir, "remove", "alice").returncode == 0
    assert user_command(data_dir, "list").stdout.split() == ["bob"]
    missing = user_command(data_dir, "remove", "alice")
    assert missing.returncode == 2 and "no user" in missing.stderr
    assert not list(data_dir.glob("*.new"))  # atomic writes leave nothing behind


def test_token_login_on_a_real_server(servers: ServerFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    token = user_command(data_dir, "add", "alice").stdout.strip()
    server = servers.start("--auth", "both", data_dir=data_dir)
    welcome, pong = hello(server.port, user="alice", token=token)
    assert (welcome["type"], welcome["verified"], pong["type"]) == ("welcome", True, "pong")
    [refused] = hello(server.port, user="alice", key=server.key)
    assert (refused["code"], refused["fatal"]) == ("bad_token", True)
    welcome, _ = hello(server.port, user="bob", key=server.key)
    assert welcome["verified"] is False
    # Added while the server runs: it reads the file again at the next hello.
    carol = user_command(data_dir, "add", "carol").stdout.strip()
    assert hello(server.port, user="carol", token=carol)[0]["verified"] is True
    user_command(data_dir, "remove", "alice")
    assert hello(server.port, user="alice", token=token)[0]["code"] == "bad_token"
    assert server.stop() == 0


def test_history_pages_and_actions_on_a_real_server(servers: ServerFactory) -> None:
    """Both modes answer history from the log (fork mode from its RECV process)."""
    server = servers.start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as sock:
        lines = [json.dumps({"type": "hello", "key": server.key, "user": "ann"})]
        lines += [
            json.dumps({"type": "send", "text": f"m{i}", "id": f"s{i}", "action": i == 4})
            for i in range(1, 6)
        ]
        lines.append(json.dumps({"type": "history", "before": 5, "limit": 3, "id": "h"}))
        sock.sendall("\n".join(lines).encode() + b"\n")
        buffer, page = b"", None
        while page is None:
            data = sock.recv(65536)
            assert data, "the server closed before answering the history request"
            buffer += data
            *complete, buffer = buffer.split(b"\n")
            page = next((o for o in map(json.loads, complete) if o["type"] == "history"), None)
    assert (page["id"], page["before"], page["first"]) == ("h", 5, 1)
    assert [(m["seq"], m["text"], m.get("action")) for m in page["messages"]] == [
        (2, "m2", None),
        (3, "m3", None),
        (4, "m4", True),
    ]
    assert server.stop() == 0
