"""Fixtures for the terminal client's process tests: a real server process and a client env.

The server is `papaya-trio serve` started through `tests/real_server.py` (the `servers`
fixture of `tests/conftest.py`, so it runs in every server mode the suite covers).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.real_server import RunningServer, ServerFactory

CLIENT = [sys.executable, "-m", "papaya_clients.terminal"]
#: Seconds a terminal test waits for what the user should see.
TIMEOUT = 15


def key_file(server: RunningServer) -> Path:
    """The file holding the server's key, as its users get it."""
    return server.data_dir / "key"


def restart(servers: ServerFactory, server: RunningServer) -> RunningServer:
    """Stop `server` and start a new one on the same port and data."""
    assert server.stop() == 0, server.log
    return servers.start(data_dir=server.data_dir, port=server.port)


@pytest.fixture
def utc() -> Iterator[None]:
    """Local time is UTC for the test (times are shown in local time)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TZ", "UTC")
        time.tzset()
        yield
    time.tzset()


@pytest.fixture
def chat_server(servers: ServerFactory) -> RunningServer:
    return servers.start()


@pytest.fixture
def wrong_key_file(tmp_path: Path) -> Path:
    """A key file whose key is well formed but not the server's."""
    path = tmp_path / "wrong-key"
    path.write_text("w" * 128)
    return path


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """An environment with no user config, UTC times, UTF-8 and a capable terminal."""
    home = tmp_path / "home"
    home.mkdir()
    return {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TZ": "UTC",
        "LANG": "C.UTF-8",
        "TERM": "xterm-256color",
    }


class Tmux:
    """One tmux server on a private socket, with the client in its only pane."""

    def __init__(self, socket: Path) -> None:
        self._base = ["tmux", "-S", str(socket)]

    def run(self, *args: str) -> str:
        return subprocess.run(
            [*self._base, *args], check=True, capture_output=True, text=True, timeout=TIMEOUT
        ).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "chat")

    def wait_for(self, condition: Callable[[str], bool], what: str) -> str:
        """Wait until the screen satisfies `condition`; capture-pane offers no blocking wait."""
        deadline = time.monotonic() + TIMEOUT
        while not condition(screen := self.screen()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; screen:\n{screen}")
            time.sleep(0.05)
        return screen


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    mux = Tmux(tmp_path / "tmux.sock")
    yield mux
    subprocess.run([*mux._base, "kill-server"], capture_output=True, timeout=TIMEOUT)


def start_tui(
    tmux: Tmux, server: RunningServer, env: dict[str, str], size: tuple[int, int] = (80, 24)
) -> None:
    """alice's full-screen client in tmux's only pane, `size` = (columns, rows)."""
    env = {**env, "PAPAYA_USER": "alice", "PAPAYA_KEY_FILE": str(key_file(server))}
    command = shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), sys.executable])
    command += " " + shlex.join([*CLIENT[1:], "--port", str(server.port)])
    columns, rows = size
    tmux.run("new-session", "-d", "-s", "chat", "-x", str(columns), "-y", str(rows), command)
