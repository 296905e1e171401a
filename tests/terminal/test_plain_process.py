"""`papaya-chat --plain` and `--once` as processes on pipes, against a real server process."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pexpect.popen_spawn import PopenSpawn

from tests.real_server import RunningServer
from tests.terminal.conftest import CLIENT, key_file

TIMEOUT = 15


def once(
    server: RunningServer, env: dict[str, str], text: str, *extra: str, user: str = "bob"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLIENT, "--once", "--port", str(server.port), "--user", user, *extra],
        input=text,
        env={**env, "PAPAYA_KEY_FILE": str(key_file(server))},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


@contextmanager
def listener(server: RunningServer, env: dict[str, str]) -> Iterator[PopenSpawn]:
    """`papaya-chat --plain` as carol, on pipes."""
    child = PopenSpawn(
        [*CLIENT, "--plain", "--port", str(server.port), "--key-file", str(key_file(server))],
        env={**env, "PAPAYA_USER": "carol"},
        encoding="utf-8",
        timeout=TIMEOUT,
    )
    try:
        yield child
    finally:
        child.kill(signal.SIGTERM)
        child.wait()
        child.proc.stdin.close()
        child.proc.stdout.close()


def test_once_sends_and_a_plain_client_prints_them(
    chat_server: RunningServer, client_env: dict[str, str]
) -> None:
    result = once(chat_server, client_env, "first line\nsecond 漢字 line\n\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    with listener(chat_server, client_env) as reader:
        reader.expect(r"\d{4}-\d\d-\d\d \d\d:\d\d bob: first line\r?\n")
        reader.expect(r"\d\d:\d\d bob: second 漢字 line\r?\n")
        result = once(chat_server, client_env, "live one\n", user="dave")
        assert result.returncode == 0
        reader.expect(r"\d\d:\d\d dave: live one\r?\n")
        reader.sendline("from the pipe")
        reader.expect(r"\d\d:\d\d carol: from the pipe\r?\n")


def test_once_with_wrong_key_exits_3(
    chat_server: RunningServer, client_env: dict[str, str], wrong_key_file: Path
) -> None:
    result = once(chat_server, client_env, "hi\n", "--key-file", str(wrong_key_file))
    assert result.returncode == 3
    assert "refused" in result.stderr
    assert "bad_key" in result.stderr


def test_once_with_empty_input_still_checks_the_key(
    chat_server: RunningServer, client_env: dict[str, str]
) -> None:
    result = once(chat_server, client_env, "", "--key", "wrong")
    assert result.returncode == 3


def test_once_without_a_server_exits_4(
    chat_server: RunningServer, client_env: dict[str, str]
) -> None:
    assert chat_server.stop() == 0, chat_server.log
    result = once(chat_server, client_env, "hi\n")
    assert result.returncode == 4
    assert f"cannot reach the server at 127.0.0.1:{chat_server.port}" in result.stderr


def test_missing_key_file_is_a_usage_error(client_env: dict[str, str], tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLIENT, "--once", "--key-file", str(tmp_path / "nope")],
        input="",
        env=client_env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "cannot read key file" in result.stderr
