"""Fixtures for the terminal client's process tests: a real server process and a client env.

The server is `papaya-trio serve` started through `tests/real_server.py` (the `servers`
fixture of `tests/conftest.py`, so it runs in every server mode the suite covers).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.real_server import RunningServer, ServerFactory

CLIENT = [sys.executable, "-m", "papaya_clients.terminal"]


def key_file(server: RunningServer) -> Path:
    """The file holding the server's key, as its users get it."""
    return server.data_dir / "key"


def restart(servers: ServerFactory, server: RunningServer) -> RunningServer:
    """Stop `server` and start a new one on the same port and data."""
    assert server.stop() == 0, server.log
    return servers.start(data_dir=server.data_dir, port=server.port)


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
