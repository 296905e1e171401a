"""The server's world in memory: a room on MemoryStorage, a listener of memory streams, and a
native-dialect test client. Used by the whole-server tests under `autojump_clock`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from papaya_trio.admission import AdmissionSettings
from papaya_trio.chatlog import ChatLog, FsyncPolicy
from papaya_trio.metrics import Metrics
from papaya_trio.room import Room, RoomSettings
from papaya_trio.server import ChatServer
from papaya_trio.storage import MemoryStorage, Storage
from sim.network import ChannelListener
from sim.world import KEY
from sim.world import sim_clock_ms as trio_clock_ms  # record times from trio's (mock) clock

BACKLOG = 16


class MemoryListener(ChannelListener[trio.abc.Stream]):
    """A listener whose connections are in-memory stream pairs."""

    def __init__(self, make_pair: Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]]) -> None:
        super().__init__(BACKLOG)
        self._make_pair = make_pair

    async def connect(self) -> trio.abc.Stream:
        client, server = self._make_pair()
        await self._send.send(server)
        return client


class LineClient:
    """A test client speaking newline-delimited JSON over any stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = b""
        self.seen: list[dict[str, Any]] = []  # messages read while waiting for an ack

    async def send(self, **obj: Any) -> None:
        await self.stream.send_all(json.dumps(obj).encode() + b"\n")

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self) -> dict[str, Any] | None:
        """The next object, or None at end of stream."""
        while b"\n" not in self._buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        obj: dict[str, Any] = json.loads(line)
        return obj

    async def expect(self, kind: str) -> dict[str, Any]:
        obj = await self.receive()
        assert obj is not None, f"expected {kind}, got end of stream"
        assert obj["type"] == kind, obj
        return obj

    async def messages(self, count: int) -> list[dict[str, Any]]:
        """The next `count` message objects, skipping acks."""
        found, self.seen = self.seen[:count], self.seen[count:]
        while len(found) < count:
            obj = await self.receive()
            assert obj is not None, f"stream ended after {len(found)} of {count} messages"
            if obj["type"] == "message":
                found.append(obj)
            else:
                assert obj["type"] == "ack", obj
        return found

    async def hello(self, user: str, key: str = KEY, **extra: Any) -> dict[str, Any]:
        await self.send(type="hello", key=key, user=user, **extra)
        return await self.expect("welcome")

    async def chat(self, text: str, client_id: str | None = None) -> int:
        """Send one message and wait for its ack; return its seq (skips messages meanwhile)."""
        await self.send(type="send", text=text, id=client_id)
        while True:
            obj = await self.receive()
            assert obj is not None
            if obj["type"] == "ack":
                assert obj["id"] == client_id
                seq: int = obj["seq"]
                return seq
            assert obj["type"] == "message", obj
            self.seen.append(obj)


class World:
    """A running in-memory server."""

    def __init__(self, server: ChatServer, listener: MemoryListener, storage: Storage) -> None:
        self.server = server
        self.listener = listener
        self.storage = storage

    @property
    def room(self) -> Room:
        return self.server.room

    async def connect(self) -> LineClient:
        return LineClient(await self.listener.connect())

    async def join(self, user: str, **extra: Any) -> tuple[LineClient, dict[str, Any]]:
        client = await self.connect()
        welcome = await client.hello(user, **extra)
        return client, welcome


@asynccontextmanager
async def open_world(
    storage: Storage | None = None,
    *,
    make_pair: Callable[
        [], tuple[trio.abc.Stream, trio.abc.Stream]
    ] = trio.testing.memory_stream_pair,
    fsync: FsyncPolicy = FsyncPolicy.ALWAYS,
    max_connections: int = 64,
    metrics: Metrics | None = None,
    admission: AdmissionSettings | None = None,
    **settings: Any,
) -> AsyncIterator[World]:
    """Run a server over memory streams for the `async with` block, then shut it down.

    `admission` replaces the default limits (and then holds `max_connections` itself)."""
    storage = storage if storage is not None else MemoryStorage()
    log, _ = await ChatLog.open(storage, clock_ms=trio_clock_ms, fsync=fsync)
    room = Room(log, KEY, RoomSettings(**settings), metrics=metrics)
    server = ChatServer(room, max_connections=max_connections, admission=admission)
    listener = MemoryListener(make_pair)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, [listener])
        yield World(server, listener, storage)
        server.shutdown()
    await log.aclose()
