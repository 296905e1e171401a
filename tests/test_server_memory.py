"""The whole server over in-memory streams, under trio's autojump clock."""

from __future__ import annotations

import logging
from functools import partial

import pytest
import trio
import trio.testing

from papaya_trio.storage import MemoryStorage
from tests.memory_world import KEY, LineClient, open_world


async def test_two_clients_chat(autojump_clock: trio.testing.MockClock) -> None:
    async with open_world() as world:
        alice, welcome = await world.join("alice")
        assert welcome["head"] == 0
        bob, _ = await world.join("bob")
        seq = await alice.chat("hello bob", "a1")
        assert seq == 1
        [got] = await bob.messages(1)
        assert (got["seq"], got["user"], got["text"]) == (1, "alice", "hello bob")
        assert got["time"].endswith("Z")
        [own] = await alice.messages(1)  # the sender gets its own message back
        assert own["seq"] == 1


async def test_history_on_connect_is_the_last_n(autojump_clock: trio.testing.MockClock) -> None:
    async with open_world(history=3) as world:
        alice, _ = await world.join("alice")
        for i in range(5):
            await alice.chat(f"m{i}")
        bob, welcome = await world.join("bob")
        assert welcome["head"] == 5
        assert [m["text"] for m in await bob.messages(3)] == ["m2", "m3", "m4"]


async def test_since_resumes_without_gap_or_duplicate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_world(history=2) as world:
        alice, _ = await world.join("alice")
        for i in range(10):
            await alice.chat(f"m{i}")
        bob = await world.connect()
        await bob.hello("bob", since=4)
        await alice.chat("live")
        got = await bob.messages(7)
        assert [m["seq"] for m in got] == list(range(5, 12))
        assert got[-1]["text"] == "live"


async def test_since_beyond_head_starts_live(autojump_clock: trio.testing.MockClock) -> None:
    async with open_world() as world:
        alice, _ = await world.join("alice")
        await alice.chat("one")
        bob, _ = await world.join("bob", since=99)
        await alice.chat("two")
        [got] = await bob.messages(1)
        assert got["text"] == "two"


async def test_resend_with_same_id_is_stored_once(autojump_clock: trio.testing.MockClock) -> None:
    async with open_world() as world:
        alice, _ = await world.join("alice")
        first = await alice.chat("only once", "dup-1")
        second = await alice.chat("only once", "dup-1")
        assert first == second == 1
        assert world.room.log.head == 1


async def test_user_cannot_post_under_another_name(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_world() as world:
        alice, _ = await world.join("alice")
        await alice.send(type="send", text="hi", user="mallory")
        [got] = await alice.messages(1)
        assert got["user"] == "alice"


async def test_wrong_key_gets_fatal_error_and_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_world() as world:
        client = await world.connect()
        await client.send(type="hello", key="x" * 128, user="eve")
        error = await client.expect("error")
        assert (error["code"], error["fatal"]) == ("bad_key", True)
        assert await client.receive() is None
        assert world.room.log.head == 0


async def test_auth_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with open_world(auth_timeout=10.0) as world:
        client = await world.connect()
        await client.send_raw(b'{"type": "hel')  # starts like a native client, then stalls
        start = trio.current_time()
        error = await client.expect("error")
        assert error["code"] == "auth_timeout"
        assert trio.current_time() - start <= 10.0
        assert await client.receive() is None


async def test_messages_before_hello_are_refused(autojump_clock: trio.testing.MockClock) -> None:
    async with open_world() as world:
        client = await world.connect()
        await client.send(type="send", text="sneaky")
        error = await client.expect("error")
        assert error["code"] == "not_authenticated"
        assert await client.receive() is None
        assert world.room.log.head == 0


async def test_bad_input_gets_errors_and_the_session_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_world(max_message_bytes=10) as world:
        alice, _ = await world.join("alice")
        await alice.send_raw(b"not json\n")
        assert (await alice.expect("error"))["code"] == "bad_json"
        await alice.send_raw(b'{"type": "send", "text": "\xff\xfe"}\n')
        assert (await alice.expect("error"))["code"] == "bad_utf8"
        await alice.send(type="dance")
        assert (await alice.expect("error"))["code"] == "unknown_type"
        await alice.send(type="send", text="x" * 11, id="long")
        error = await alice.expect("error")
        assert (error["code"], error["id"], error["fatal"]) == ("message_too_long", "long", False)
        await alice.send(type="send", text="bell\x07")
        assert (await alice.expect("error"))["code"] == "bad_text"
        await alice.send(type="hello", key=KEY, user="alice")
        assert (await alice.expect("error"))["code"] == "already_authenticated"
        await alice.send(type="ping", id="p1")
        assert (await alice.expect("pong"))["id"] == "p1"
        assert await alice.chat("still here") == 1
        assert world.room.log.head == 1


async def test_overlong_line_is_fatal(autojump_clock: trio.testing.MockClock) -> None:
    async with open_world(max_message_bytes=10, max_line_bytes=300) as world:
        alice, _ = await world.join("alice")
        await alice.send_raw(b'{"type": "send", "text": "' + b"a" * 400)
        error = await alice.expect("error")
        assert (error["code"], error["fatal"]) == ("line_too_long", True)
        assert await alice.receive() is None
        assert world.room.log.head == 0


async def test_half_close_still_delivers_acks(autojump_clock: trio.testing.MockClock) -> None:
    async with open_world() as world:
        alice, _ = await world.join("alice")
        await alice.send(type="send", text="one", id="1")
        await alice.send(type="send", text="two", id="2")
        await alice.stream.send_eof()
        kinds = []
        while (obj := await alice.receive()) is not None:
            kinds.append(obj["type"])
        assert kinds.count("ack") == 2 and kinds.count("message") == 2


async def test_slow_client_catches_up_in_order(autojump_clock: trio.testing.MockClock) -> None:
    pair = partial(trio.testing.lockstep_stream_pair)
    async with open_world(make_pair=pair, max_lag=1000) as world:
        alice, _ = await world.join("alice")
        slow, _ = await world.join("slow")
        for i in range(300):  # slow reads nothing meanwhile: its send task is blocked
            await alice.chat(f"m{i}")
        got = await slow.messages(300)
        assert [m["seq"] for m in got] == list(range(1, 301))


async def test_lagging_client_is_dropped_and_others_unaffected(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    pair = partial(trio.testing.lockstep_stream_pair)
    async with open_world(make_pair=pair, max_lag=20) as world:
        alice, _ = await world.join("alice")
        stuck = await world.connect()
        await stuck.hello("stuck")
        for i in range(30):  # stuck never reads; alice keeps reading her own messages
            await alice.chat(f"m{i}")
        await trio.testing.wait_all_tasks_blocked()
        assert {s.identity.user for s in world.room.sessions} == {"alice"}
        assert "stuck left: lagging" in caplog.text
        assert [m["seq"] for m in await alice.messages(30)] == list(range(1, 31))
        # The stuck client's stream was closed under it: reading ends without the live tail.
        seen = []
        while (obj := await stuck.receive()) is not None:
            seen.append(obj)
        assert len([o for o in seen if o["type"] == "message"]) < 30


async def test_graceful_shutdown_tells_clients(autojump_clock: trio.testing.MockClock) -> None:
    storage = MemoryStorage()
    async with open_world(storage) as world:
        alice, _ = await world.join("alice")
        await alice.chat("before shutdown")
        await alice.messages(1)
        world.server.shutdown()
        error = await alice.expect("error")
        assert (error["code"], error["fatal"]) == ("shutdown", True)
        assert await alice.receive() is None
    assert storage.synced == len(storage.data) > 0


async def test_history_survives_restart(autojump_clock: trio.testing.MockClock) -> None:
    storage = MemoryStorage()
    async with open_world(storage) as world:
        alice, _ = await world.join("alice")
        await alice.chat("remember me")
    async with open_world(storage.after_crash()) as world:
        bob, welcome = await world.join("bob")
        assert welcome["head"] == 1
        [got] = await bob.messages(1)
        assert got["text"] == "remember me"


async def test_server_full(autojump_clock: trio.testing.MockClock) -> None:
    async with open_world(max_connections=1) as world:
        alice, _ = await world.join("alice")
        extra = await world.connect()
        await extra.send(type="hello", key=KEY, user="bob")
        assert (await extra.expect("error"))["code"] == "server_full"
        assert await alice.chat("still fine") == 1


async def test_papaya_dialect_chats_with_native(autojump_clock: trio.testing.MockClock) -> None:
    async with open_world() as world:
        alice, _ = await world.join("alice")
        await alice.chat("hi from native")
        papaya = LineClient(await world.listener.connect())
        await papaya.send_raw(KEY.encode())
        history = await papaya.stream.receive_some(4096)
        assert history == b"alice: hi from native\n"
        await papaya.send_raw(b"carol: hi from papaya\n")
        got = (await alice.messages(2))[1]
        assert (got["user"], got["text"]) == ("carol", "hi from papaya")
        await alice.chat("second")
        live = b""
        while live.count(b"\x00") < 2:
            live += await papaya.stream.receive_some(4096)
        assert live == b"carol: hi from papaya\x00alice: second\x00"


async def test_papaya_wrong_key_closes_silently(autojump_clock: trio.testing.MockClock) -> None:
    async with open_world() as world:
        stream = await world.listener.connect()
        await stream.send_all(b"w" * 128)
        assert await stream.receive_some(100) == b""


async def test_papaya_silence_closes_after_one_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_world(papaya_auth_timeout=1.0) as world:
        stream = await world.listener.connect()
        await stream.send_all(b"abc")  # a papayaChat client that never finishes its key
        start = trio.current_time()
        assert await stream.receive_some(100) == b""
        assert trio.current_time() - start <= 1.0


async def test_joins_and_leaves_are_logged_but_message_texts_never(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with open_world() as world:
        alice, _ = await world.join("alice")
        await alice.chat("a very private remark")
        papaya = await world.listener.connect()
        await papaya.send_all(KEY.encode() + b"carol: another secret\nbad line without colon\n")
        await alice.messages(2)
        await alice.stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
    assert "alice joined" in caplog.text and "alice left: client closed" in caplog.text
    assert "dropped a line" in caplog.text
    assert "private remark" not in caplog.text and "another secret" not in caplog.text
    assert "without colon" not in caplog.text
