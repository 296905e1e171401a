"""Shared fixtures."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import settings

from tests.real_server import Dialer, ServerFactory
from tests.redis_server import RedisServer

settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci")

SERVER_MODES = ["trio", "fork"]


@pytest.fixture(params=SERVER_MODES)
def servers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerFactory]:
    """Start real `papaya-trio serve` processes (one per mode the suite covers)."""
    factory = ServerFactory(tmp_path, request.param)
    yield factory
    factory.cleanup()


@pytest.fixture
def trio_servers(tmp_path: Path) -> Iterator[ServerFactory]:
    """Real trio-mode `papaya-trio serve` processes (the mode with the HTTP port and TLS)."""
    factory = ServerFactory(tmp_path, "trio")
    yield factory
    factory.cleanup()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh real redis-server with `appendonly yes` and `appendfsync always`."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def dial() -> AsyncIterator[Dialer]:
    """Client connections to real servers, all closed when the test ends."""
    dialer = Dialer()
    yield dialer
    for stream in dialer.streams:
        await trio.aclose_forcefully(stream)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder another user can enter (pytest's tmp_path is owner-only)."""
    folder = Path(tempfile.mkdtemp(prefix="papaya-shared-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)
