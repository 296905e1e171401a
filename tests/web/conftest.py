"""Fixtures for the browser tests: real servers and headless Chromium instances."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.real_server import RunningServer
from tests.web.browser import TcpClient, launch


@pytest.fixture
def browsers(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start headless Chromium instances (fresh profile each); all are quit afterwards."""
    started: list[Any] = []

    def start(**options: Any) -> Any:
        driver = launch(tmp_path, **options)
        started.append(driver)
        return driver

    yield start
    for driver in started:
        driver.quit()


@pytest.fixture
def terminals() -> Iterator[Callable[[RunningServer, str], TcpClient]]:
    """Connect native-dialect TCP clients (the terminal users); all are closed afterwards."""
    started: list[TcpClient] = []

    def connect(server: RunningServer, user: str) -> TcpClient:
        client = TcpClient(server.port, user, server.key)
        started.append(client)
        return client

    yield connect
    for client in started:
        client.close()
