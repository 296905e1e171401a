"""The WebSocket transport over in-memory streams, under trio's autojump clock: the chat, the
limits, keepalive, and every way a connection can go wrong."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from papaya_trio.transports.websocket import WebSocketSettings
from tests.memory_world import KEY
from tests.web.ws_world import HOST, WebWorld, open_web_world, upgrade_request


async def test_websocket_client_chats_with_history_and_since(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_web_world(history=2) as world:
        alice, welcome = await world.join_ws("alice")
        assert welcome == {
            "type": "welcome",
            "server": welcome["server"],
            "user": "alice",
            "head": 0,
        }
        for i in range(4):
            assert await alice.chat(f"m{i}", f"a{i}") == i + 1
        assert [m["text"] for m in await alice.messages(4)] == ["m0", "m1", "m2", "m3"]
        bob, welcome = await world.join_ws("bob")
        assert welcome["head"] == 4
        assert [m["seq"] for m in await bob.messages(2)] == [3, 4]  # the last `history`
        carol, _ = await world.join_ws("carol", since=1)
        await alice.chat("live")
        got = await carol.messages(4)
        assert [m["seq"] for m in got] == [2, 3, 4, 5]
        assert (got[-1]["user"], got[-1]["text"]) == ("alice", "live")
        assert got[-1]["time"].endswith("Z")


async def test_resend_with_the_same_id_is_stored_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_web_world() as world:
        alice, _ = await world.join_ws("alice")
        assert await alice.chat("only once", "x-1") == 1
        await alice.ws.aclose()
        again, _ = await world.join_ws("alice", since=1)
        assert await again.chat("only once", "x-1") == 1  # confirmed with the original seq
        assert world.room.log.head == 1


async def test_ping_gets_pong(autojump_clock: trio.testing.MockClock) -> None:
    async with open_web_world() as world:
        alice, _ = await world.join_ws("alice")
        await alice.send(type="ping", id="p1")
        assert (await alice.expect("pong"))["id"] == "p1"


async def test_binary_frames_and_garbage_get_errors_and_the_session_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_web_world(max_message_bytes=10) as world:
        alice, _ = await world.join_ws("alice")
        await alice.send_raw(b'{"type": "send", "text": "binary"}')
        error = await alice.expect("error")
        assert (error["code"], error["fatal"]) == ("binary_frame", False)
        assert "text frames" in error["message"]
        await alice.send_raw("not json")
        assert (await alice.expect("error"))["code"] == "bad_json"
        await alice.send_raw("[1, 2]")
        assert (await alice.expect("error"))["code"] == "bad_json"
        await alice.send(type="dance")
        assert (await alice.expect("error"))["code"] == "unknown_type"
        await alice.send(type="send", text="x" * 11, id="long")
        error = await alice.expect("error")
        assert (error["code"], error["id"], error["fatal"]) == ("message_too_long", "long", False)
        await alice.send(type="send", text="tab\there")
        assert (await alice.expect("error"))["code"] == "bad_text"
        await alice.send(type="hello", key=KEY, user="alice")
        assert (await alice.expect("error"))["code"] == "already_authenticated"
        assert await alice.chat("still here") == 1
        assert world.room.log.head == 1


@pytest.mark.parametrize(
    ("first", "code"),
    [
        ('{"type": "send", "text": "sneaky"}', "not_authenticated"),
        ("garbage", "bad_json"),
        (b"\x00binary", "binary_frame"),
        ('{"type": "hello", "key": "' + "x" * 128 + '", "user": "eve"}', "bad_key"),
        ('{"type": "hello", "key": "' + KEY + '", "user": "e ve"}', "bad_user"),
    ],
)
async def test_anything_but_a_good_hello_is_refused_with_1008(
    autojump_clock: trio.testing.MockClock, first: str | bytes, code: str
) -> None:
    async with open_web_world() as world:
        client = await world.connect_ws()
        await client.send_raw(first)
        error = await client.expect("error")
        assert (error["code"], error["fatal"]) == (code, True)
        assert await client.receive() is None
        assert client.close_code == 1008
        assert world.room.log.head == 0


async def test_auth_timeout_over_websocket(autojump_clock: trio.testing.MockClock) -> None:
    async with open_web_world(auth_timeout=7.0) as world:
        client = await world.connect_ws()
        start = trio.current_time()
        error = await client.expect("error")
        assert error["code"] == "auth_timeout"
        assert trio.current_time() - start == pytest.approx(7.0)
        assert await client.receive() is None
        assert client.close_code == 1008


async def test_oversize_message_closes_with_1009_and_stores_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = WebSocketSettings(max_message_bytes=2000)
    async with open_web_world(websocket=settings, max_message_bytes=100) as world:
        bob, _ = await world.join_ws("bob")
        alice, _ = await world.join_ws("alice")
        await alice.send(type="send", text="a" * 3000, id="big")
        assert await alice.receive() is None
        assert alice.close_code == 1009
        assert world.room.log.head == 0
        assert await bob.chat("unaffected") == 1


async def test_oversize_in_bytes_but_not_in_characters_also_closes_with_1009(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # trio-websocket counts characters; 1500 two-byte characters are 3000 bytes of UTF-8.
    settings = WebSocketSettings(max_message_bytes=2000)
    async with open_web_world(websocket=settings, max_message_bytes=100) as world:
        alice, _ = await world.join_ws("alice")
        await alice.send(type="send", text="é" * 1500, id="big")
        error = await alice.expect("error")
        assert (error["code"], error["fatal"]) == ("frame_too_long", True)
        assert await alice.receive() is None
        assert alice.close_code == 1009
        assert world.room.log.head == 0


async def test_a_message_at_the_limit_is_fine(autojump_clock: trio.testing.MockClock) -> None:
    async with open_web_world(websocket=WebSocketSettings(max_message_bytes=1000)) as world:
        alice, _ = await world.join_ws("alice")
        frame = '{"type": "send", "text": "' + "x" * 100 + '"}'
        await alice.send_raw(frame + " " * (1000 - len(frame)))
        assert {(await alice.receive() or {}).get("type") for _ in range(2)} == {"ack", "message"}
        assert world.room.log.head == 1


async def test_invalid_utf8_in_a_text_frame_drops_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_web_world() as world:
        alice, _ = await world.join_ws("alice")
        # A masked text frame (mask 0) whose payload is not UTF-8, written under the library.
        # wsproto treats it as a protocol failure and the connection is dropped without a
        # close frame (browsers never send such frames).
        await alice.stream.send_all(b"\x81\x82\x00\x00\x00\x00\xff\xfe")
        assert await alice.receive() is None
        await trio.testing.wait_all_tasks_blocked()
        assert not world.room.sessions
        assert world.room.log.head == 0


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET / HTTP/1.1\r\nHost: pap", upgrade_request()[:-4]],
    ids=["silent", "partial-request", "partial-upgrade"],
)
async def test_handshake_timeout(autojump_clock: trio.testing.MockClock, sent: bytes) -> None:
    async with open_web_world(websocket=WebSocketSettings(handshake_timeout=3.0)) as world:
        stream = await world.http.connect()
        await stream.send_all(sent)
        start = trio.current_time()
        assert await stream.receive_some(1000) == b""
        assert trio.current_time() - start == pytest.approx(3.0)
        await trio.testing.wait_all_tasks_blocked()
        assert world.server.connections == 0


async def test_keepalive_keeps_live_clients_and_drops_dead_ones(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    settings = WebSocketSettings(ping_interval=30.0, ping_timeout=20.0)
    async with open_web_world(websocket=settings) as world:
        alive, _ = await world.join_ws("alive")
        dead, _ = await world.join_ws("dead")
        assert len(world.room.sessions) == 2
        dead.stream.frozen = True
        await trio.sleep(30.0 + 20.0 - 0.5)  # the first ping is not answered yet...
        assert len(world.room.sessions) == 2
        await trio.sleep(1.0)  # ...and now it is too late
        assert {s.identity.user for s in world.room.sessions} == {"alive"}
        assert "no pong within 20s" in caplog.text
        await trio.sleep(5 * 30.0)  # more pings, all answered (within the 300 s idle timeout)
        assert await alive.chat("still here") == 1


async def test_graceful_shutdown_closes_websockets_with_1001(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_web_world() as world:
        alice, _ = await world.join_ws("alice")
        await alice.chat("before shutdown")
        await alice.messages(1)
        waiting = await world.connect_ws()  # connected, not yet authenticated
        world.server.shutdown()
        for client in (alice, waiting):
            error = await client.expect("error")
            assert (error["code"], error["fatal"]) == ("shutdown", True)
            assert await client.receive() is None
            assert client.close_code == 1001


async def test_server_full_closes_with_1013(autojump_clock: trio.testing.MockClock) -> None:
    async with open_web_world(max_connections=1) as world:
        alice, _ = await world.join_ws("alice")
        extra = await world.connect_ws()
        await extra.send(type="hello", key=KEY, user="bob")
        assert (await extra.expect("error"))["code"] == "server_full"
        assert await extra.receive() is None
        assert extra.close_code == 1013
        assert await alice.chat("still fine") == 1


async def test_client_close_ends_the_session(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with open_web_world() as world:
        alice, _ = await world.join_ws("alice")
        await alice.ws.aclose(1000, "bye")
        await trio.testing.wait_all_tasks_blocked()
        assert "alice left: client closed" in caplog.text
        assert world.server.connections == 0


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("http://chat.example", 101),
        ("http://evil.example", 403),
        (None, 101),  # not a browser: Origin protects browsers only
    ],
)
async def test_allowed_origins(
    autojump_clock: trio.testing.MockClock, origin: str | None, status: int
) -> None:
    settings = WebSocketSettings(allowed_origins=frozenset({"http://chat.example"}))
    async with open_web_world(websocket=settings) as world:
        assert await upgrade_status(world, origin) == status


@pytest.mark.parametrize(
    ("scheme", "origin", "status"),
    [
        ("http", f"http://{HOST}", 101),  # the page this server served
        ("http", f"HTTP://{HOST.upper()}", 101),  # origins compare without case
        ("http", "http://evil.example", 403),  # another site's page
        ("http", f"http://{HOST}:8080", 403),  # another port is another origin
        ("http", f"https://{HOST}", 403),  # the wrong scheme for this port
        ("https", f"https://{HOST}", 101),
        ("https", f"http://{HOST}", 403),
        ("http", None, 101),  # not a browser
    ],
)
async def test_only_the_servers_own_origin_by_default(
    autojump_clock: trio.testing.MockClock, scheme: str, origin: str | None, status: int
) -> None:
    async with open_web_world(websocket=WebSocketSettings(scheme=scheme)) as world:
        assert await upgrade_status(world, origin) == status


async def test_a_star_allows_any_origin(autojump_clock: trio.testing.MockClock) -> None:
    settings = WebSocketSettings(allowed_origins=frozenset({"*"}))
    async with open_web_world(websocket=settings) as world:
        client = await world.connect_ws(headers=[(b"Origin", b"http://anywhere.example")])
        assert (await client.hello("alice"))["user"] == "alice"


async def upgrade_status(world: WebWorld, origin: str | None) -> int:
    """The HTTP status the server answers an upgrade request from a page at `origin`."""
    stream = await world.http.connect()
    await stream.send_all(upgrade_request("/ws", *([f"Origin: {origin}"] if origin else [])))
    answer = await stream.receive_some(4096)
    return int(answer.split(b" ", 2)[1])


async def test_websocket_at_another_path_is_404(autojump_clock: trio.testing.MockClock) -> None:
    async with open_web_world() as world:
        answer = await world.request(upgrade_request("/chat"))
        assert answer.status == 404


async def test_broken_upgrade_request_is_400(autojump_clock: trio.testing.MockClock) -> None:
    async with open_web_world() as world:
        request = upgrade_request().replace(b"Sec-WebSocket-Version: 13\r\n", b"")
        answer = await world.request(request)
        assert answer.status == 400


async def test_a_ping_during_the_servers_close_handshake_does_not_crash_the_server(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with open_web_world() as world:
        alice, _ = await world.join_ws("alice")
        alice.stream.frozen = True  # alice stops reading, so she never answers the close
        world.server.shutdown()
        await trio.testing.wait_all_tasks_blocked()  # the server's close frame is out
        # A masked ping frame with no payload, straight onto alice's stream: the server's
        # reader would answer it with a pong after its own close frame.
        await alice.stream.send_all(b"\x89\x80\x00\x00\x00\x00")
    assert "ping during the closing handshake" in caplog.text
