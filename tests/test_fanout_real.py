"""The fan-out fast path (papaya_trio/fanout.py) on real sockets: the broadcaster writing to
idle clients itself must change nothing a client can see, and must never let a slow client
hold up the others or lose a message.

Each test runs the server in this process over real TCP sockets on 127.0.0.1 (so the fast path
is taken: it needs a socket), waits on conditions with generous deadlines, and is bounded in
messages.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest
import trio

from papaya_trio.chatlog import ChatLog, FsyncPolicy
from papaya_trio.fanout import DirectWrite
from papaya_trio.peer import Peer
from papaya_trio.room import Room, RoomSettings
from papaya_trio.server import ChatServer
from papaya_trio.session import Identity, Session
from papaya_trio.storage import MemoryStorage
from sim.world import KEY
from tests.memory_world import LineClient

STEP_TIMEOUT = 20.0  # generous: the suite shares 2 cores with other work
SMALL_BUFFER = 4096  # bytes: SO_RCVBUF of clients that read slowly, SO_SNDBUF of their socket
BIG_TEXT = 4000  # characters: a few messages fill a small buffer
HUGE_TEXT = 60_000  # characters: more than a small buffer takes at once
NOON_MS = 1_764_590_400_000  # every record's time, so two servers store the same bytes


def fixed_clock_ms() -> int:
    return NOON_MS


def sample(room: Room, name: str) -> float:
    value = room.metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


class NormalPathSession(Session):
    """A session that never lends its stream: every delivery takes the normal path."""

    def __init__(self, room: Room, peer: Peer, identity: Identity) -> None:
        super().__init__(room, peer, identity)
        self._lease = None


class SmallSendBuffers(trio.abc.Listener[trio.abc.Stream]):
    """A real TCP listener whose accepted sockets have a small send buffer, so a client that
    reads slowly soon makes the server's non-blocking writes take only part of their bytes."""

    def __init__(self, inner: trio.SocketListener) -> None:
        self.inner = inner

    async def accept(self) -> trio.abc.Stream:
        stream = await self.inner.accept()
        assert isinstance(stream, trio.SocketStream)
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        return stream

    async def aclose(self) -> None:
        await self.inner.aclose()


class Site:
    """A running server seen from its clients: its room, and connections that are closed
    when the server stops."""

    def __init__(self, room: Room, port: int) -> None:
        self.room = room
        self.port = port
        self.streams: list[trio.SocketStream] = []

    async def connect(self, *, receive_buffer: int | None = None) -> trio.SocketStream:
        sock = trio.socket.socket()
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        stream = trio.SocketStream(sock)
        self.streams.append(stream)
        await sock.connect(("127.0.0.1", self.port))
        return stream

    async def join(self, user: str, **hello: Any) -> LineClient:
        client = LineClient(await self.connect())
        with trio.fail_after(STEP_TIMEOUT):
            await client.hello(user, **hello)
        return client


@asynccontextmanager
async def serving(
    *,
    max_lag: int = 1000,
    session_class: type[Session] = Session,
    small_send_buffers: bool = False,
    max_message_bytes: int = 4096,
) -> AsyncIterator[Site]:
    """A server on a real TCP port of 127.0.0.1, in this process."""
    log, _ = await ChatLog.open(MemoryStorage(), clock_ms=fixed_clock_ms, fsync=FsyncPolicy.NEVER)
    settings = RoomSettings(
        max_lag=max_lag,
        rate_messages=0,
        rate_bytes=0,
        max_message_bytes=max_message_bytes,
        max_line_bytes=3 * max_message_bytes + 1024,
    )
    room = Room(log, KEY, settings, session_class=session_class)
    server = ChatServer(room)
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    site = Site(room, listener.socket.getsockname()[1])
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = [listener]
    if small_send_buffers:
        listeners = [SmallSendBuffers(listener)]
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners)
        try:
            yield site
        finally:
            server.shutdown()
            for stream in site.streams:
                await trio.aclose_forcefully(stream)
    await log.aclose()


def complete_messages(data: bytes) -> list[dict[str, Any]]:
    """The message objects among the complete lines of a native stream."""
    lines = data.split(b"\n")[:-1]  # the last piece is an unfinished line, or empty
    objects = [json.loads(line) for line in lines]
    return [obj for obj in objects if obj["type"] == "message"]


async def test_a_client_that_stops_reading_delays_nobody_loses_nothing_and_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with serving(max_lag=30) as site:
        room = site.room
        readers = [await site.join(f"reader{n}") for n in range(3)]
        alice = await site.join("alice")
        stuck_stream = await site.connect(receive_buffer=SMALL_BUFFER)
        stuck = LineClient(stuck_stream)
        with trio.fail_after(STEP_TIMEOUT):
            await stuck.hello("stuck")  # and it never reads again until it is dropped

        def stuck_connected() -> bool:
            return any(s.identity.user == "stuck" for s in room.sessions)

        # Lockstep: each message must reach every reader before the next is sent, so a
        # stuck client that could hold up a delivery would stall this loop (and fail it).
        sent = 0
        while stuck_connected() or sent < 40:
            assert sent < 400, "the stuck client was never dropped"
            with trio.fail_after(STEP_TIMEOUT):
                seq = await alice.chat(f"{sent:04d} " + "x" * BIG_TEXT)
                for reader in readers:
                    [message] = await reader.messages(1)
                    assert message["seq"] == seq == sent + 1
            sent += 1

        assert sample(room, "papaya_lag_evictions_total") == 1.0
        assert "stuck left: lagging" in caplog.text
        # The readers were served by the fast path (their send tasks stayed parked).
        assert sample(room, "papaya_direct_deliveries_total") >= 3 * sent

        # What the stuck client did get is the log from the start, in order, with no gap
        # (its stream was cut, so the last line may be unfinished).
        received = b""
        with trio.fail_after(STEP_TIMEOUT):
            try:
                while data := await stuck_stream.receive_some(65536):
                    received += data
            except trio.BrokenResourceError:  # reset: the server closed with our bytes unread
                pass
        got = [m["seq"] for m in complete_messages(received)]
        assert got == list(range(1, len(got) + 1))
        assert len(got) < sent
        # And nothing is lost for it either: resuming from there brings exactly the rest.
        back = await site.join("stuck", since=got[-1] if got else 0)
        with trio.fail_after(STEP_TIMEOUT):
            rest = await back.messages(sent - len(got))
        assert [m["seq"] for m in rest] == list(range(len(got) + 1, sent + 1))


class RecordingSession(Session):
    """A session whose lease notes each direct write: bytes asked, bytes the socket took."""

    writes: dict[str, list[tuple[int, int]]] = {}

    def __init__(self, room: Room, peer: Peer, identity: Identity) -> None:
        super().__init__(room, peer, identity)
        if self._lease is not None:
            noted = self.writes.setdefault(identity.user or "papaya", [])
            writer = self._lease.writer
            recording = replace(writer, write=self._recording(writer.write, noted))
            self._lease = replace(self._lease, writer=recording)

    @staticmethod
    def _recording(write: DirectWrite, noted: list[tuple[int, int]]) -> DirectWrite:
        def recorded(data: bytes | memoryview) -> int:
            taken = write(data)
            noted.append((len(data), taken))
            return taken

        return recorded


async def test_a_slow_reader_gets_every_byte_in_order_across_partial_writes() -> None:
    RecordingSession.writes = {}
    total = 30
    # Each message is bigger than the socket's buffers, so each direct write to the slow
    # reader is cut short and its send task must finish it.
    texts = [f"{n:04d} " + chr(ord("a") + n % 26) * HUGE_TEXT for n in range(total)]
    async with serving(
        session_class=RecordingSession, small_send_buffers=True, max_message_bytes=HUGE_TEXT + 5
    ) as site:
        slow = LineClient(await site.connect(receive_buffer=SMALL_BUFFER))
        with trio.fail_after(STEP_TIMEOUT):
            await slow.hello("slow")
        alice = await site.join("alice")
        received = b""
        with trio.fail_after(10 * STEP_TIMEOUT):
            for n, text in enumerate(texts):
                await alice.chat(text)
                # Read it slowly, all of it: the slow reader's send task is idle again before
                # the next message, which the broadcaster then writes to it directly.
                while received.count(b"\n") < n + 2:  # the welcome's line and n + 1 messages
                    data = await slow.stream.receive_some(1024)
                    assert data, "the server closed the slow reader's connection"
                    received += data
                    await trio.sleep(0.001)

    cut = [taken for asked, taken in RecordingSession.writes["slow"] if 0 < taken < asked]
    assert len(cut) >= total // 2, RecordingSession.writes["slow"]
    messages = complete_messages(received)
    assert [m["seq"] for m in messages] == list(range(1, total + 1))
    assert [m["text"] for m in messages] == texts
    assert received.endswith(b"\n")


async def conversation(session_class: type[Session]) -> tuple[bytes, bytes, float]:
    """What a native and a papayaChat client receive, byte for byte, while alice says ten
    things one at a time; and how many deliveries the fast path made."""
    async with serving(session_class=session_class) as site:
        alice = await site.join("alice")
        with trio.fail_after(STEP_TIMEOUT):
            for n in range(3):
                await alice.chat(f"before {n}", f"b{n}")
        bob_stream = await site.connect()
        bob = b""
        papaya_stream = await site.connect()
        papaya = b""

        async def bob_until(count: int, marker: bytes) -> None:
            nonlocal bob
            while bob.count(marker) < count:
                bob += await bob_stream.receive_some(65536)

        async def papaya_until(count: int, marker: bytes) -> None:
            nonlocal papaya
            while papaya.count(marker) < count:
                papaya += await papaya_stream.receive_some(65536)

        with trio.fail_after(STEP_TIMEOUT):
            hello = {"type": "hello", "key": KEY, "user": "bob"}
            await bob_stream.send_all(json.dumps(hello).encode() + b"\n")
            await bob_until(3, b'"type":"message"')
            await papaya_stream.send_all(KEY.encode())
            await papaya_until(3, b"alice: before")
            await bob_until(1, b'"type":"presence"')  # the papayaChat client joined
            for n in range(10):
                await alice.chat(f"live {n} \N{SNOWMAN} {'*' * n}", f"l{n}")
                await bob_until(4 + n, b'"type":"message"')
                await papaya_until(n + 1, b"\x00")
        direct = sample(site.room, "papaya_direct_deliveries_total")
    return bob, papaya, direct


async def test_the_fast_path_writes_the_bytes_the_normal_path_writes() -> None:
    bob_fast, papaya_fast, direct_fast = await conversation(Session)
    bob_normal, papaya_normal, direct_normal = await conversation(NormalPathSession)
    assert direct_normal == 0.0
    assert direct_fast >= 20.0  # bob's ten and the papayaChat client's ten at least
    assert bob_fast == bob_normal
    assert papaya_fast == papaya_normal
    assert papaya_fast.count(b"\x00") == 10 and b"\xe2\x98\x83" in papaya_fast  # the snowman
