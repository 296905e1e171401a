"""Issue 13 over in-memory streams under the autojump clock: names nobody can take twice,
accounts, presence, typing hints, history paging, actions and multi-line texts, and the
papayaChat dialect's bursts, long names and dropped lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from papaya_trio.accounts import Accounts, Kdf, add_user, remove_user, users_path
from papaya_trio.chatlog import READ_CHUNK
from papaya_trio.records import Record, encode_record
from papaya_trio.storage import MemoryStorage
from tests.memory_world import KEY, LineClient, World, open_world

CHEAP = Kdf(n=16, r=1, p=1)  # the file records the parameters; the server uses what it finds


async def papaya_connect(world: World) -> trio.abc.Stream:
    stream = await world.listener.connect()
    await stream.send_all(KEY.encode())
    return stream


async def wait_until(condition: Callable[[], object], seconds: float = 30) -> None:
    """Poll a server-side condition that has no event to wait on, on trio's (mock) time."""
    with trio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 (nothing to wait on but the state)
            await trio.sleep(0.01)


async def until_pong(client: LineClient, ping_id: str) -> list[dict[str, Any]]:
    """Everything (notices included) the client gets until the pong for `ping_id`."""
    await client.send(type="ping", id=ping_id)
    got = []
    while (obj := await client.receive(notices=True)) is not None:
        if obj == {"type": "pong", "id": ping_id}:
            return got
        got.append(obj)
    raise AssertionError(f"stream ended before pong {ping_id}: {got}")


# --- names ----------------------------------------------------------------------------------
async def test_a_connected_name_cannot_be_taken_until_it_leaves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_world() as world:
        alice, _ = await world.join("alice")
        impostor = await world.connect()
        await impostor.send(type="hello", key=KEY, user="alice")
        error = await impostor.expect("error")
        assert (error["code"], error["fatal"]) == ("name_taken", True)
        assert await impostor.receive() is None
        assert await alice.chat("still mine") == 1
        await alice.stream.aclose()
        await wait_until(lambda: all(s.identity.user != "alice" for s in world.room.sessions))
        again, welcome = await world.join("alice")
        assert welcome["verified"] is False
        assert await again.chat("back") == 2


async def test_concurrent_hellos_for_one_name_only_one_wins(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_world() as world:
        clients = [await world.connect() for _ in range(5)]
        for client in clients:
            await client.send(type="hello", key=KEY, user="dup")
        answers = [(await client.receive()) or {} for client in clients]
        kinds = sorted(answer.get("code", answer["type"]) for answer in answers)
        assert kinds == ["name_taken"] * 4 + ["welcome"]


# --- accounts ------------------------------------------------------------------------------
def accounts_in(tmp_path: Path) -> tuple[Accounts, str]:
    token = add_user(tmp_path, "alice", CHEAP)
    return Accounts(users_path(tmp_path), threaded=False), token


async def hello_answer(world: World, **hello: Any) -> dict[str, Any]:
    client = await world.connect()
    await client.send(type="hello", **hello)
    answer = await client.receive()
    assert answer is not None
    return answer


@pytest.mark.parametrize(
    ("auth", "hello", "expected"),
    [
        ("both", {"user": "alice", "token": "GOOD"}, "verified"),
        ("both", {"user": "alice", "key": KEY, "token": "GOOD"}, "verified"),
        ("both", {"user": "alice", "key": KEY, "token": "x" * 43}, "bad_token"),
        ("both", {"user": "alice", "key": KEY}, "bad_token"),  # the name is registered
        ("both", {"user": "bob", "key": KEY}, "unverified"),
        ("both", {"user": "bob", "key": KEY, "token": "GOOD"}, "bad_token"),  # not bob's
        ("both", {"user": "bob", "key": "W" * 128}, "bad_key"),
        ("accounts", {"user": "alice", "token": "GOOD"}, "verified"),
        ("accounts", {"user": "alice", "token": "bad"}, "bad_token"),
        ("accounts", {"user": "bob", "key": KEY}, "bad_token"),
        ("accounts", {"user": "alice", "key": KEY}, "bad_token"),
        ("key", {"user": "alice", "key": KEY, "token": "whatever"}, "unverified"),
        ("key", {"user": "alice", "token": "GOOD"}, "bad_key"),
    ],
)
async def test_auth_modes(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    auth: str,
    hello: dict[str, Any],
    expected: str,
) -> None:
    accounts, token = accounts_in(tmp_path)
    if hello.get("token") == "GOOD":
        hello["token"] = token
    async with open_world(accounts=accounts, auth=auth) as world:
        answer = await hello_answer(world, **hello)
        if expected in ("verified", "unverified"):
            assert answer["type"] == "welcome", answer
            assert answer["verified"] is (expected == "verified")
        else:
            assert (answer["type"], answer["code"], answer["fatal"]) == ("error", expected, True)


async def test_verified_messages_and_several_devices(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    accounts, token = accounts_in(tmp_path)
    async with open_world(accounts=accounts, auth="both") as world:
        phone, _ = await world.join("alice", token=token)
        _laptop, welcome = await world.join("alice", token=token)  # verified: may share it
        online = {m["user"]: m for m in welcome["online"]}
        assert online["alice"] == {
            "user": "alice",
            "verified": True,
            "dialect": "native",
            "count": 2,
        }
        bob, _ = await world.join("bob")
        await phone.chat("signed")
        await bob.chat("plain")
        got = await bob.messages(2)
        assert [m.get("verified") for m in got] == [True, None]
        assert world.storage.data.count(b'"v":1') == 1  # type: ignore[attr-defined]


async def test_a_removed_user_is_refused_without_a_restart(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    accounts, token = accounts_in(tmp_path)
    async with open_world(accounts=accounts, auth="accounts") as world:
        assert (await hello_answer(world, user="alice", token=token))["type"] == "welcome"
        remove_user(tmp_path, "alice")
        answer = await hello_answer(world, user="alice", token=token)
        assert answer["code"] == "bad_token"
        new_token = add_user(tmp_path, "alice", CHEAP)
        assert (await hello_answer(world, user="alice", token=new_token))["type"] == "welcome"


# --- presence -------------------------------------------------------------------------------
async def test_presence_joins_leaves_and_the_welcome_list(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_world() as world:
        alice, welcome = await world.join("alice")
        assert welcome["first"] == 0
        assert welcome["online"] == [
            {"user": "alice", "verified": False, "dialect": "native", "count": 1}
        ]
        bob, bob_welcome = await world.join("bob")
        assert [m["user"] for m in bob_welcome["online"]] == ["alice", "bob"]
        join = await alice.notice()
        assert join == {
            "type": "presence",
            "event": "join",
            "user": "bob",
            "verified": False,
            "dialect": "native",
        }
        papaya = await papaya_connect(world)
        for client in (alice, bob):
            notice = await client.notice()
            assert (notice["event"], notice["user"], notice["dialect"]) == ("join", None, "papaya")
        carol, carol_welcome = await world.join("carol")
        assert {"user": None, "verified": False, "dialect": "papaya", "count": 1} in carol_welcome[
            "online"
        ]
        # bob's connection drops mid-way: everybody else hears he left.
        await bob.stream.aclose()
        leave = await carol.notice()
        assert (leave["event"], leave["user"]) == ("leave", "bob")
        await papaya.aclose()
        assert ((await carol.notice())["event"], carol.notices) == ("leave", [])
        # alice heard, in order: bob join, papaya join, carol join, bob leave, papaya leave.
        events = [("join", "bob"), ("join", None)]
        while len(events) < 5:
            notice = await alice.notice()
            events.append((notice["event"], notice["user"]))
        assert events[2:] == [("join", "carol"), ("leave", "bob"), ("leave", None)]
        assert [m.user for m in world.room.online()] == ["alice", "carol"]


async def test_a_client_that_never_reads_notices_is_dropped_not_buffered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def small_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        return trio.testing.lockstep_stream_pair()

    async with open_world(make_pair=small_pair, max_connections=400) as world:
        deaf = await world.connect()
        await deaf.send(type="hello", key=KEY, user="deaf")  # never reads: writes block
        joined = []
        for i in range(300):  # each join and leave is a presence notice for deaf
            client = await world.connect()
            await client.send(type="hello", key=KEY, user=f"u{i}")
            joined.append(client)
        await wait_until(lambda: all(s.identity.user != "deaf" for s in world.room.sessions))
        assert "deaf" not in [m.user for m in world.room.online()]


# --- typing ---------------------------------------------------------------------------------
async def test_typing_is_relayed_at_most_once_per_two_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_world() as world:
        alice, _ = await world.join("alice")
        bob, _ = await world.join("bob")
        assert (await alice.notice())["event"] == "join"
        for _ in range(10):  # a hostile client: ten hints in 0.9 s
            await alice.send(type="typing")
            await trio.sleep(0.1)
        await until_pong(alice, "a1")
        got = await until_pong(bob, "b1")
        assert got == [{"type": "typing", "user": "alice"}]
        await trio.sleep(1.2)  # 2.1 s after the first relayed hint
        await alice.send(type="typing")
        await until_pong(alice, "a2")
        assert await until_pong(bob, "b2") == [{"type": "typing", "user": "alice"}]
        assert await until_pong(alice, "a3") == []  # nobody is told about their own typing


# --- history --------------------------------------------------------------------------------
class CountingStorage(MemoryStorage):
    """Memory storage that counts the bytes read from it."""

    bytes_read = 0

    async def read(self, offset: int, length: int) -> bytes:
        data = await super().read(offset, length)
        self.bytes_read += len(data)
        return data


def stored_log(count: int) -> bytes:
    return b"".join(
        encode_record(Record(seq, 1_700_000_000_000 + seq, f"u{seq % 7}", f"message {seq} " * 4))
        for seq in range(1, count + 1)
    )


async def test_history_pages_are_gap_free_agree_with_the_log_and_read_little(
    autojump_clock: trio.testing.MockClock,
) -> None:
    total = 5000
    storage = CountingStorage(stored_log(total))
    assert len(storage.data) > 6 * READ_CHUNK
    # The model of the log: its lines, parsed here with json, not with the server's decoder.
    model = [json.loads(line.split(b" ", 1)[1]) for line in storage.data.splitlines()]
    async with open_world(storage, cache_records=64, history=0) as world:
        bob, welcome = await world.join("bob")
        assert (welcome["head"], welcome["first"]) == (total, 1)
        before, pages, seen = welcome["head"] + 1, 0, []
        while True:
            storage.bytes_read = 0
            await bob.send(type="history", before=before, limit=500, id=f"h{pages}")
            page = await bob.expect("history")
            assert storage.bytes_read <= 3 * READ_CHUNK  # bounded, never the whole log
            assert (page["id"], page["before"], page["first"]) == (f"h{pages}", before, 1)
            messages = page["messages"]
            assert len(messages) == min(200, before - 1)  # limit clamped to 200
            seqs = [m["seq"] for m in messages]
            assert seqs == list(range(before - len(messages), before))  # gap-free, oldest first
            seen = messages + seen
            pages += 1
            if not messages or seqs[0] == page["first"]:
                break
            before = seqs[0]
        assert pages == 25
        assert [(m["seq"], m["user"], m["text"]) for m in seen] == [
            (r["seq"], r["user"], r["text"]) for r in model
        ]
        await bob.send(type="history", before=1, limit=5)
        assert (await bob.expect("history"))["messages"] == []


@pytest.mark.parametrize(
    "request_fields",
    [
        {"before": 5},
        {"before": 5, "limit": 0},
        {"before": -1, "limit": 5},
        {"before": "5", "limit": 5},
        {"before": 5, "limit": 5.5},
        {"before": True, "limit": 5},
        {"before": 5, "limit": 5, "id": ["x"]},
    ],
)
async def test_malformed_history_requests_get_bad_history(
    autojump_clock: trio.testing.MockClock, request_fields: dict[str, Any]
) -> None:
    async with open_world() as world:
        alice, _ = await world.join("alice")
        await alice.send(type="history", **request_fields)
        error = await alice.expect("error")
        assert (error["code"], error["fatal"]) == ("bad_history", False)
        assert await alice.chat("the session goes on") == 1


async def test_history_of_a_live_room_ends_at_the_head(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_world() as world:
        alice, _ = await world.join("alice")
        for i in range(3):
            await alice.chat(f"m{i}")
        await alice.send(type="history", before=10**12, limit=2)
        page = await alice.expect("history")
        assert [m["text"] for m in page["messages"]] == ["m1", "m2"]
        assert page["id"] is None


# --- actions and multi-line texts -----------------------------------------------------------
async def test_actions_and_multi_line_texts(autojump_clock: trio.testing.MockClock) -> None:
    async with open_world() as world:
        alice, _ = await world.join("alice")
        papaya = await papaya_connect(world)
        assert (await alice.notice())["user"] is None
        await alice.send(type="send", text="waves", action=True, id="a")
        await alice.send(type="send", text="one\ntwo", id="b")
        await alice.send(type="send", text="x\n" * 100, id="c")  # 101 lines
        await alice.send(type="send", text="hi", action="yes", id="d")
        got = await until_pong(alice, "p")
        errors = [(o["code"], o["id"]) for o in got if o["type"] == "error"]
        assert errors == [("bad_text", "c"), ("bad_field", "d")]
        waves, multi = [o for o in got if o["type"] == "message"]
        assert (waves["action"], waves["text"]) == (True, "waves")
        assert "action" not in multi and multi["text"] == "one\ntwo"
        assert b'"a":1' in world.storage.data  # type: ignore[attr-defined]
        received = b""
        with trio.fail_after(5):
            while not received.endswith(b"alice: two\x00"):
                received += await papaya.receive_some(4096)
        assert received.replace(b"\x00", b"|") == b"* alice waves|alice: one\nalice: two|"


# --- the papayaChat dialect -----------------------------------------------------------------
class RecordingStream(trio.abc.Stream):
    """The server's side of a connection: records each write; `gate` can hold writes back."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes: list[bytes] = []
        self.gate = trio.Event()
        self.gate.set()
        self.held = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not self.gate.is_set():
            self.held += 1
            await self.gate.wait()
        self.writes.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_six_line_burst_reaches_a_papaya_reader_as_the_original_daemon_sends_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server_sides: list[RecordingStream] = []

    def recording_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        client, server = trio.testing.memory_stream_pair()
        server_sides.append(RecordingStream(server))
        return client, server_sides[-1]

    async with open_world(make_pair=recording_pair) as world:
        alice, _ = await world.join("alice")
        reader = await papaya_connect(world)
        assert (await alice.notice())["dialect"] == "papaya"
        wire = server_sides[1]
        wire.gate = trio.Event()  # hold the reader's next write: what follows is pending
        await alice.chat("first")
        await wait_until(lambda: wire.held)
        for i in range(1, 7):
            await alice.chat(f"burst {i}")
        wire.gate.set()
        received = b""
        with trio.fail_after(5):
            while received.count(b"\x00") < 2:
                received += await reader.receive_some(65536)
        burst = b"\n".join(b"alice: burst %d" % i for i in range(1, 7)) + b"\x00"
        assert wire.writes == [b"alice: first\x00", burst]  # one write for the whole burst
        assert received == b"alice: first\x00" + burst
        # What the original client shows: each read up to its first NUL.
        shown = [chunk.split(b"\x00")[0] for chunk in wire.writes]
        assert b"\n".join(shown).count(b"\n") + 1 == 7


async def test_papaya_long_names_and_empty_texts_are_stored_and_drops_logged_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with open_world() as world:
        alice, _ = await world.join("alice")
        papaya = await papaya_connect(world)
        long_name = "n" * 256
        await papaya.send_all(long_name.encode() + b": from a long name\nbob: \n")
        for _ in range(5):
            await papaya.send_all(b"x" * 257 + b": too long a name\n")
        await papaya.send_all(b"bob: after the drops\n")
        got = await alice.messages(3)
        assert [(m["user"], m["text"], m["dialect"]) for m in got] == [
            (long_name, "from a long name", "papaya"),
            ("bob", "", "papaya"),
            ("bob", "after the drops", "papaya"),
        ]
        await papaya.aclose()
        await wait_until(lambda: len(world.room.sessions) == 1)
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 2, drops
    assert "256 bytes" in drops[0] and "dropped 5 lines in all" in drops[1]
