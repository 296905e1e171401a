"""The terminal client tells its user when retention dropped messages it has not seen."""

from __future__ import annotations

import random
from pathlib import Path

import trio

from papaya_clients.terminal.session import Backoff, ChatSession, Notice, SessionEvent
from papaya_clients.terminal.transport import open_tcp_connection
from papaya_trio.chatlog import ChatLog, Retention
from papaya_trio.keys import generate_key
from papaya_trio.protocol.client import ChatMessage
from papaya_trio.room import Room, RoomSettings
from papaya_trio.segments import SegmentedFileStorage
from papaya_trio.server import ChatServer
from papaya_trio.service import wall_clock_ms


async def test_resuming_before_the_oldest_kept_message_shows_a_notice(tmp_path: Path) -> None:
    retention = Retention(bytes=8192, segment_bytes=4096)
    log, _ = await ChatLog.open(
        SegmentedFileStorage(tmp_path), clock_ms=wall_clock_ms, retention=retention
    )
    for i in range(60):
        await log.append("bob", f"{i} " + "x" * 200)
    assert log.first > 3
    key = generate_key()
    server = ChatServer(Room(log, key, RoomSettings()))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    send_events, events = trio.open_memory_channel[SessionEvent](1000)
    rng = random.Random(1)
    session = ChatSession(
        connect=lambda: open_tcp_connection("127.0.0.1", port),
        key=key,
        user="alice",
        events=send_events,
        rng=rng,
        backoff=Backoff(rng, initial=0.01, maximum=0.05),
    )
    session.last_seq = 2  # she saw messages 1 and 2 long ago
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners)
        nursery.start_soon(session.run)
        seen: list[SessionEvent] = []
        with trio.fail_after(10):
            async for event in events:
                seen.append(event)
                if isinstance(event, ChatMessage) and event.seq == log.head:
                    break
        server.shutdown()
        nursery.cancel_scope.cancel()
    await log.aclose()
    notices = [e.text for e in seen if isinstance(e, Notice)]
    assert notices == [
        f"server: messages before {log.first} are no longer kept; history"
        f" starts at {log.first} (history_trimmed)"
    ]
    assert [e.seq for e in seen if isinstance(e, ChatMessage)] == list(range(log.first, 61))
