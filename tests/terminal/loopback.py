"""The real server in this process on loopback, and a proxy in front of it that injects faults.

`open_loopback_server` runs the server's own `ChatServer`, `Room` and `ChatLog` (on
`MemoryStorage`) over real TCP listeners on 127.0.0.1, so the session tests talk to the real
protocol code and can still look into the log. `FaultProxy` forwards bytes between the client
under test and that server; on command it drops every connection, holds new ones, swallows the
next server object of a kind (a lost ack), repeats messages or stops passing the server's
objects on (a server that went silent). It splits the stream into lines, as the native dialect
is one JSON object per line, so each fault acts on whole objects.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import trio

from papaya_trio.chatlog import ChatLog
from papaya_trio.keys import generate_key
from papaya_trio.records import Record
from papaya_trio.room import Room, RoomSettings
from papaya_trio.server import ChatServer
from papaya_trio.service import wall_clock_ms
from papaya_trio.storage import MemoryStorage

RECEIVE_BYTES = 65536
#: Every stored record fits in one read in these tests.
READ_ALL = 1_000_000
#: Shutdown waits at most this long for sessions to say goodbye (tests should not linger).
SHUTDOWN_DEADLINE = 1.0


@dataclass
class LoopbackServer:
    """A running in-process server: its room, its key and the port it listens on."""

    room: Room
    key: str
    port: int

    async def store(self, user: str, text: str) -> int:
        """Store a message as if `user` had sent it (every session is told); return its seq."""
        return (await self.room.log.append(user, text)).seq

    async def stored(self) -> list[Record]:
        """Every message in the log, oldest first."""
        return await self.room.log.read_after(0, READ_ALL)


@asynccontextmanager
async def open_loopback_server() -> AsyncIterator[LoopbackServer]:
    """Serve a fresh room on an unused 127.0.0.1 port for the block, then shut it down."""
    key = generate_key()
    log, _ = await ChatLog.open(MemoryStorage(), clock_ms=wall_clock_ms)
    room = Room(log, key, RoomSettings())
    server = ChatServer(room, shutdown_deadline=SHUTDOWN_DEADLINE)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, listeners)
            yield LoopbackServer(room, key, port)
            server.shutdown()
    finally:
        await log.aclose()


async def pump_lines(
    source: trio.abc.ReceiveStream, emit: Callable[[bytes], Awaitable[None]]
) -> None:
    """Call `emit` with each line of `source` (newline included) until it ends; a partial
    last line is emitted as it is."""
    buffer = b""
    while data := await source.receive_some(RECEIVE_BYTES):
        buffer += data
        while (end := buffer.find(b"\n")) >= 0:
            line, buffer = buffer[: end + 1], buffer[end + 1 :]
            await emit(line)
    if buffer:
        await emit(buffer)


@dataclass
class _Swallow:
    kind: str
    done: trio.Event


class FaultProxy:
    """A TCP proxy from `port` to the server's port that injects faults on command."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        #: Every object a client sent through the proxy, in order.
        self.client_objects: list[dict[str, object]] = []
        #: Pass every server `message` on twice (the client must drop the repeat).
        self.repeat_messages = False
        #: Pass nothing from the server on any more, like a host that vanished.
        self.silent = False
        self._swallows: list[_Swallow] = []
        self._connections: set[trio.CancelScope] = set()
        self._released = trio.Event()
        self._released.set()

    def __repr__(self) -> str:
        return f"<FaultProxy :{self.port} -> :{self.upstream_port} {len(self._connections)} open>"

    def sent(self, kind: str) -> list[dict[str, object]]:
        """The objects of type `kind` that clients sent, in order."""
        return [obj for obj in self.client_objects if obj.get("type") == kind]

    def drop(self) -> None:
        """Close every open connection at once, as a crash or a network loss would."""
        for scope in self._connections:
            scope.cancel()

    def hold(self) -> None:
        """Accept new connections but connect them to the server only after `release`."""
        if self._released.is_set():
            self._released = trio.Event()

    def release(self) -> None:
        """Let held and new connections through."""
        self._released.set()

    def swallow_next(self, kind: str) -> trio.Event:
        """Do not pass on the next server object of type `kind`; the event is set once one
        was swallowed."""
        swallow = _Swallow(kind, trio.Event())
        self._swallows.append(swallow)
        return swallow.done

    async def serve(
        self,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept and forward until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._forward, listeners, task_status=task_status)

    async def _forward(self, client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self._connections.add(scope)
            try:
                async with client:
                    await self._released.wait()
                    try:
                        server = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
                    except OSError:
                        return  # the server is gone: the client sees its connection close
                    async with server, trio.open_nursery() as nursery:
                        end = nursery.cancel_scope
                        nursery.start_soon(self._pump, client, server, self._from_client, end)
                        nursery.start_soon(self._pump, server, client, self._from_server, end)
            finally:
                self._connections.discard(scope)

    async def _pump(
        self,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        faults: Callable[[bytes], list[bytes]],
        end: trio.CancelScope,
    ) -> None:
        """Forward `source` to `sink` line by line through `faults`; at the end of either
        stream the whole connection ends (after what was read is written)."""

        async def emit(line: bytes) -> None:
            for out in faults(line):
                await sink.send_all(out)

        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await pump_lines(source, emit)
        end.cancel()

    def _from_client(self, line: bytes) -> list[bytes]:
        if line.strip():  # the blank line after a hello carries nothing
            self.client_objects.append(json.loads(line))
        return [line]

    def _from_server(self, line: bytes) -> list[bytes]:
        if self.silent:
            return []
        kind = json.loads(line).get("type")
        for swallow in self._swallows:
            if swallow.kind == kind:
                self._swallows.remove(swallow)
                swallow.done.set()
                return []
        if self.repeat_messages and kind == "message":
            return [line, line]
        return [line]
