"""Fixtures for the fork-mode tests: real `serve --mode fork` processes and their clients."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psutil
import pytest
import trio

from tests.memory_world import LineClient
from tests.real_server import RunningServer, ServerFactory

WAIT_TIMEOUT = 15.0
#: Options for messages of 48 kB, so that a few MB fill the kernel's socket buffers.
BIG_MESSAGES = ("--fsync", "never", "--max-message-bytes", "50000", "--max-line-bytes", "160000")
BIG_COUNT = 160  # 7.7 MB of them: more than the kernel buffers (up to 4 MB) hold for a client


def big_text(i: int) -> str:
    """Message i of the big ones: 48 kB of UTF-8 in few characters, numbered at the start."""
    return f"{i:<8}" + "€" * 16000


@pytest.fixture
def fork_servers(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start fork-mode servers; none outlives the test."""
    factory = ServerFactory(tmp_path, "fork")
    yield factory
    factory.cleanup()


class Clients:
    """Opens client connections on loopback and closes them all when the test ends."""

    def __init__(self) -> None:
        self.streams: list[trio.SocketStream] = []

    async def connect(self, port: int, receive_buffer: int | None = None) -> trio.SocketStream:
        """A TCP connection; `receive_buffer` shrinks SO_RCVBUF (a client that reads slowly)."""
        sock = trio.socket.socket()
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        await sock.connect(("127.0.0.1", port))
        stream = trio.SocketStream(sock)
        self.streams.append(stream)
        return stream

    async def native(
        self, server: RunningServer, user: str, receive_buffer: int | None = None, **hello: object
    ) -> LineClient:
        client = LineClient(await self.connect(server.port, receive_buffer))
        await client.hello(user, key=server.key, **hello)
        return client

    async def papaya(self, server: RunningServer) -> trio.SocketStream:
        stream = await self.connect(server.port)
        await stream.send_all(server.key.encode())
        return stream

    async def close_all(self) -> None:
        for stream in self.streams:
            await trio.aclose_forcefully(stream)
        self.streams.clear()


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    opened = Clients()
    yield opened
    await opened.close_all()


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` until it holds; fail after WAIT_TIMEOUT seconds saying `what`."""
    with trio.move_on_after(WAIT_TIMEOUT):
        # The condition is outside this process (process table, server log): nothing to
        # wait on but the condition itself.
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out waiting for {what}")


def children_of(server: RunningServer) -> list[psutil.Process]:
    """The server's descendants still in the process table, zombies (unreaped) included."""
    try:
        return psutil.Process(server.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def processes_using(data_dir: Path) -> list[psutil.Process]:
    """Every live process whose command line names `data_dir` (forked children keep their
    parent's command line, so this finds orphans too)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if str(data_dir) in " ".join(process.info["cmdline"] or ()) and _alive(process):
            found.append(process)
    return found


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
