"""Reconnect, resume and resend against the real server code, over real loopback sockets.

The server runs in this process (see `loopback.py`) so the tests can read its log; faults
(dropped connections, a lost ack, repeats, silence) come from a proxy between it and the client.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import pytest
import trio
import trio_websocket

from papaya_clients.terminal.session import (
    Backoff,
    ChatSession,
    Confirmed,
    Connected,
    Disconnected,
    Rejected,
    ServerUnreachable,
    SessionEvent,
    SessionRefused,
)
from papaya_clients.terminal.transport import (
    Connector,
    open_tcp_connection,
    open_websocket_connection,
)
from papaya_trio.protocol.client import ChatMessage, History, Presence
from tests.terminal.loopback import FaultProxy, LoopbackServer, open_loopback_server, pump_lines

E = TypeVar("E")
WAIT = 5


class Client:
    """A session under test and the events it reported."""

    def __init__(self, connect: Connector, key: str, **kw: float) -> None:
        rng = random.Random(7)
        self.send_events, self.events = trio.open_memory_channel[SessionEvent](1000)
        self.session = ChatSession(
            connect=connect,
            key=key,
            user="alice",
            events=self.send_events,
            rng=rng,
            backoff=Backoff(rng, initial=0.01, maximum=0.05),
            **kw,  # type: ignore[arg-type]
        )

    async def next(self, kind: type[E], where: Callable[[E], bool] = lambda _: True) -> E:
        """The next event of `kind` satisfying `where`, skipping others."""
        with trio.fail_after(WAIT):
            async for event in self.events:
                if isinstance(event, kind) and where(event):
                    return event
        raise AssertionError("event channel closed")

    async def messages(self, count: int) -> list[ChatMessage]:
        return [await self.next(ChatMessage) for _ in range(count)]


def tcp(port: int) -> Connector:
    return lambda: open_tcp_connection("127.0.0.1", port)


@pytest.fixture
async def server() -> AsyncIterator[LoopbackServer]:
    async with open_loopback_server() as running:
        yield running


@pytest.fixture
async def proxy(server: LoopbackServer, nursery: trio.Nursery) -> FaultProxy:
    faults = FaultProxy(server.port)
    await nursery.start(faults.serve)
    return faults


@pytest.fixture
async def client(server: LoopbackServer, proxy: FaultProxy, nursery: trio.Nursery) -> Client:
    """alice, connected through the proxy (after the history she was sent)."""
    chat = Client(tcp(proxy.port), server.key)
    nursery.start_soon(chat.session.run)
    await chat.next(Connected)
    return chat


async def test_history_then_live_then_own_message_confirmed(
    server: LoopbackServer, proxy: FaultProxy, nursery: trio.Nursery
) -> None:
    for n in range(3):
        await server.store("bob", f"old {n}")
    client = Client(tcp(proxy.port), server.key)
    nursery.start_soon(client.session.run)
    assert (await client.next(Connected)).head == 3
    assert [m.text for m in await client.messages(3)] == ["old 0", "old 1", "old 2"]
    message_id = client.session.send_nowait("hi 漢字")
    [own] = await client.messages(1)
    assert (own.seq, own.user, own.text) == (4, "alice", "hi 漢字")
    assert await client.next(Confirmed) == Confirmed(message_id, 4)
    await client.session.wait_all_confirmed()
    assert client.session.pending_count == 0
    assert proxy.sent("hello")[0].get("since") is None  # first connect: the server's history


async def test_reconnect_resumes_without_gap_or_duplicate(
    server: LoopbackServer, proxy: FaultProxy, client: Client
) -> None:
    await server.store("bob", "before")
    await client.messages(1)
    proxy.hold()  # the reconnection waits until "while away" is stored
    proxy.drop()
    await client.next(Disconnected)
    await server.store("bob", "while away")
    proxy.release()
    await client.next(Connected)
    await server.store("bob", "after")
    got = await client.messages(2)
    assert [(m.seq, m.text) for m in got] == [(2, "while away"), (3, "after")]
    assert proxy.sent("hello")[-1]["since"] == 1
    assert client.session.last_seq == 3


async def test_repeated_messages_are_dropped(
    server: LoopbackServer, proxy: FaultProxy, client: Client
) -> None:
    proxy.repeat_messages = True
    await server.store("bob", "one")
    await server.store("bob", "two")
    assert [m.seq for m in await client.messages(2)] == [1, 2]


async def test_unconfirmed_send_is_resent_with_its_id_and_stored_once(
    server: LoopbackServer, proxy: FaultProxy, client: Client
) -> None:
    lost = proxy.swallow_next("ack")  # stored, but the ack is "lost"
    message_id = client.session.send_nowait("important")
    await client.messages(1)
    with trio.fail_after(WAIT):
        await lost.wait()
    assert client.session.pending_count == 1
    proxy.drop()
    assert await client.next(Confirmed) == Confirmed(message_id, 1)
    assert [s["id"] for s in proxy.sent("send")] == [message_id, message_id]
    assert [r.text for r in await server.stored()] == ["important"]
    assert client.session.pending_count == 0


async def test_sends_while_disconnected_go_out_after_reconnect(
    server: LoopbackServer, proxy: FaultProxy, client: Client
) -> None:
    proxy.hold()  # no reconnection until the message is queued
    proxy.drop()
    await client.next(Disconnected)
    assert not client.session.connected
    client.session.send_nowait("queued")
    proxy.release()
    await client.next(Confirmed)
    assert [r.text for r in await server.stored()] == ["queued"]


async def test_refused_send_is_reported_and_not_resent(proxy: FaultProxy, client: Client) -> None:
    message_id = client.session.send_nowait("bell\x07")
    rejected = await client.next(Rejected)
    assert (rejected.id, rejected.text, rejected.code) == (message_id, "bell\x07", "bad_text")
    assert client.session.pending_count == 0
    assert client.session.rejected == 1
    proxy.drop()  # a reconnection must not send it again
    await client.next(Connected)
    client.session.send_nowait("after the reconnection")
    await client.next(Confirmed)
    assert [s["text"] for s in proxy.sent("send")] == ["bell\x07", "after the reconnection"]


async def test_pending_sends_are_bounded(server: LoopbackServer) -> None:
    client = Client(tcp(server.port), server.key, max_pending=2)
    client.session.send_nowait("a")
    client.session.send_nowait("b")
    with pytest.raises(trio.WouldBlock):
        client.session.send_nowait("c")


async def test_wrong_key_is_fatal(server: LoopbackServer) -> None:
    client = Client(tcp(server.port), key="wrong")
    with pytest.raises(SessionRefused, match="bad_key") as info:
        await client.session.run()
    assert info.value.code == "bad_key"


async def test_first_connection_failure_is_fatal() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    unused_port = listener.socket.getsockname()[1]
    await listener.aclose()
    client = Client(tcp(unused_port), "k" * 128)
    with pytest.raises(ServerUnreachable):
        await client.session.run()


async def test_silent_server_is_dropped_after_an_unanswered_ping(
    server: LoopbackServer, proxy: FaultProxy, nursery: trio.Nursery
) -> None:
    client = Client(tcp(proxy.port), server.key, keepalive_interval=0.05, keepalive_timeout=0.05)
    nursery.start_soon(client.session.run)
    await client.next(Connected)
    proxy.silent = True  # the server answers, but nothing reaches the client any more
    disconnected = await client.next(Disconnected)
    assert "no answer to a ping" in disconnected.reason
    assert proxy.sent("ping")  # the ping did go out


async def test_a_client_that_only_receives_still_pings(
    server: LoopbackServer, proxy: FaultProxy, nursery: trio.Nursery
) -> None:
    """The server drops a native client that sends nothing for its idle timeout, even one
    that receives all the time: a reader in a busy room must ping too."""
    client = Client(tcp(proxy.port), server.key, keepalive_interval=0.2, keepalive_timeout=5.0)
    nursery.start_soon(client.session.run)
    await client.next(Connected)
    for n in range(8):  # a message every 0.05 s: never 0.2 s without receiving
        await server.store("bob", f"busy {n}")
        await client.messages(1)
        await trio.sleep(0.05)
    assert proxy.sent("ping")


async def test_websocket_transport_carries_the_same_objects(
    server: LoopbackServer, nursery: trio.Nursery
) -> None:
    async def bridge(request: trio_websocket.WebSocketRequest) -> None:
        """One object per frame on the WebSocket side, one line per object on the server's."""
        ws = await request.accept()
        tcp_stream = await trio.open_tcp_stream("127.0.0.1", server.port)

        async def upstream() -> None:
            try:
                while True:
                    frame = await ws.get_message()
                    assert isinstance(frame, str)
                    await tcp_stream.send_all(frame.encode() + b"\n")
            except trio_websocket.ConnectionClosed:
                tasks.cancel_scope.cancel()

        async def downstream(line: bytes) -> None:
            await ws.send_message(line.rstrip(b"\n").decode())

        async with tcp_stream, trio.open_nursery() as tasks:
            tasks.start_soon(upstream)
            await pump_lines(tcp_stream, downstream)
            await ws.aclose()

    ws_server = await nursery.start(trio_websocket.serve_websocket, bridge, "127.0.0.1", 0, None)
    url = f"ws://127.0.0.1:{ws_server.port}/"
    await server.store("bob", "over websocket")
    client = Client(lambda: open_websocket_connection(url), server.key)
    nursery.start_soon(client.session.run)
    await client.next(Connected)
    assert [m.text for m in await client.messages(1)] == ["over websocket"]
    client.session.send_nowait("back")
    await client.next(Confirmed)
    assert (await server.stored())[-1].text == "back"


async def test_history_pages_are_asked_for_and_passed_on(
    server: LoopbackServer, proxy: FaultProxy, client: Client
) -> None:
    for n in range(5):
        await server.store("bob", f"m{n}")
    await client.messages(5)
    assert client.session.request_history(4, 2, "h-1")
    page = await client.next(History)
    assert (page.id, page.before, [m.seq for m in page.messages]) == ("h-1", 4, [2, 3])
    assert not page.at_start
    assert client.session.request_history(2, 200, "h-2")
    last = await client.next(History)
    assert [m.text for m in last.messages] == ["m0"] and last.at_start
    assert proxy.sent("history")[0] == {"type": "history", "before": 4, "limit": 2, "id": "h-1"}


async def test_history_is_not_asked_for_offline(server: LoopbackServer) -> None:
    client = Client(tcp(server.port), server.key)
    assert not client.session.request_history(10, 10, "h-1")
    assert not client.session.send_typing()


async def test_a_name_held_by_a_live_connection_is_refused_at_first(
    server: LoopbackServer, client: Client
) -> None:
    twin = Client(tcp(server.port), server.key)  # also "alice"
    with pytest.raises(SessionRefused, match="name_taken"):
        await twin.session.run()


async def test_presence_and_actions_reach_the_session(
    server: LoopbackServer, client: Client, nursery: trio.Nursery
) -> None:
    rng = random.Random(3)
    send, events = trio.open_memory_channel[SessionEvent](100)
    bob = ChatSession(connect=tcp(server.port), key=server.key, user="bob", events=send, rng=rng)
    nursery.start_soon(bob.run)
    joined = await client.next(Presence)
    assert (joined.event, joined.user) == ("join", "bob")
    with trio.fail_after(WAIT):
        async for event in events:
            if isinstance(event, Connected):
                assert {m.user for m in event.online} == {"alice", "bob"}
                break
    client.session.send_nowait("waves", action=True)
    own = await client.next(ChatMessage)
    assert (own.user, own.text, own.action) == ("alice", "waves", True)


async def test_the_token_goes_into_the_hello(
    server: LoopbackServer, proxy: FaultProxy, nursery: trio.Nursery
) -> None:
    client = Client(tcp(proxy.port), server.key, token="secret-token")  # type: ignore[arg-type]
    nursery.start_soon(client.session.run)
    await client.next(Connected)  # auth = "key" (the default) does not ask for the token
    assert proxy.sent("hello")[0]["token"] == "secret-token"
