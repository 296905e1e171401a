"""Fork mode's process pairs: wake-ups, slow readers, reaping, shutdown, shared data folder."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import zlib
from pathlib import Path

import trio

from papaya_trio.fork import wakeup
from papaya_trio.protocol.events import Message
from papaya_trio.protocol.native import encode_line
from papaya_trio.records import Record, RecordScanner, encode_record
from tests.fork.conftest import (
    BIG_COUNT,
    BIG_MESSAGES,
    WAIT_TIMEOUT,
    Clients,
    big_text,
    children_of,
    processes_using,
    wait_until,
)
from tests.real_server import ServerFactory


def test_a_poke_made_while_busy_waits_in_the_pipe() -> None:
    """The original's lost wake-up: here a poke sent before SEND waits is still seen."""
    read_end, write_end = wakeup.open_wake_pipe()
    poller = select.poll()
    poller.register(read_end, select.POLLIN)
    wakeup.poke(write_end)  # arrives while SEND is busy, before it waits
    assert poller.poll(0), "the wake-up was lost"
    assert wakeup.drain(read_end)
    assert not poller.poll(0), "drained wake-ups must not wake again"
    for _ in range(100_000):  # a full pipe neither blocks the poker nor loses the wake-up
        wakeup.poke(write_end)
    assert poller.poll(0)


async def test_message_stored_while_send_is_busy_writing_arrives_without_another(
    fork_servers: ServerFactory, clients: Clients, tmp_path: Path
) -> None:
    history = 2000
    text = "h" * 4000  # 8 MB of history: far more than the socket buffers hold
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with (data_dir / "chat.log").open("wb") as log_file:
        for seq in range(1, history + 1):
            log_file.write(encode_record(Record(seq, 0, "old", text)))
    server = fork_servers.start("--fsync", "never")
    with trio.fail_after(WAIT_TIMEOUT * 2):
        reader = await clients.native(server, "reader", receive_buffer=4096, since=0)
        writer = await clients.native(server, "writer", since=history)
        # reader's SEND is now busy writing history into a client that is not reading yet
        assert await writer.chat("late", "w1") == history + 1
        got = await reader.messages(history + 1)
    assert [m["seq"] for m in got] == list(range(1, history + 2))
    assert got[-1]["text"] == "late"
    assert server.stop() == 0


async def test_messages_stored_while_send_is_busy_arrive_in_order_as_rendered_one_by_one(
    fork_servers: ServerFactory, clients: Clients, tmp_path: Path
) -> None:
    history, live = 2000, 30
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with (data_dir / "chat.log").open("wb") as log_file:
        for seq in range(1, history + 1):  # 8 MB: SEND is busy writing it for a while
            log_file.write(encode_record(Record(seq, 0, "old", "h" * 4000)))
    server = fork_servers.start("--fsync", "never")
    with trio.fail_after(WAIT_TIMEOUT * 2):
        reader = await clients.connect(server.port, receive_buffer=4096)
        hello = {"type": "hello", "key": server.key, "user": "reader", "since": 0}
        await reader.send_all(json.dumps(hello).encode() + b"\n")
        writer = await clients.native(server, "writer", since=history)
        for i in range(live):  # each stored (acked) while the reader's SEND is still busy
            assert await writer.chat(f"live {i} ✓", f"w{i}") == history + 1 + i
        received = bytearray()
        while received.count(b"\n") < 1 + history + live:  # the welcome, then every message
            chunk = await reader.receive_some(1 << 20)
            assert chunk, "the server closed the stream"
            received += chunk
    welcome, _, messages = bytes(received).partition(b"\n")
    assert json.loads(welcome)["type"] == "welcome"
    scanner = RecordScanner()
    records = [item.record for item in scanner.feed((data_dir / "chat.log").read_bytes())]
    assert [r.seq for r in records] == list(range(1, history + live + 1))
    assert messages == b"".join(encode_line(Message(record)) for record in records)
    assert server.stop() == 0


async def test_papaya_client_behind_gets_every_line_in_order_in_nul_ended_batches(
    fork_servers: ServerFactory, clients: Clients
) -> None:
    server = fork_servers.start(*BIG_MESSAGES)
    sent = BIG_COUNT  # its SEND waits for the client at every batch
    with trio.fail_after(WAIT_TIMEOUT * 2):
        papaya = await clients.connect(server.port, receive_buffer=4096)
        await papaya.send_all(server.key.encode() + b"pap: here\n")
        talker = await clients.native(server, "talker")
        assert (await talker.messages(1))[0]["text"] == "here"  # papaya's stream has begun
        for i in range(sent):
            await talker.chat(big_text(i))
        papaya.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # now read it all
        received = bytearray()
        last = f"talker: {sent - 1:<8}".encode()
        while last not in received or not received.endswith(b"\x00"):
            chunk = await papaya.receive_some(1 << 20)
            assert chunk, "the server closed the stream"
            received += chunk
    scanner = RecordScanner()
    records = [item.record for item in scanner.feed((server.data_dir / "chat.log").read_bytes())]
    assert len(records) == sent + 1
    one_by_one = b"".join(record.raw_line.encode() + b"\n" for record in records)
    assert bytes(received).replace(b"\x00", b"\n") == one_by_one
    assert 1 < received.count(b"\x00") < sent  # batches: several messages before each NUL
    assert server.stop() == 0


async def test_client_that_stops_reading_is_dropped_and_slows_nobody(
    fork_servers: ServerFactory, clients: Clients
) -> None:
    server = fork_servers.start("--max-lag", "20", *BIG_MESSAGES)
    sent = BIG_COUNT
    with trio.fail_after(WAIT_TIMEOUT * 2):
        stuck = await clients.native(server, "stuck", receive_buffer=4096)
        talker = await clients.native(server, "talker")
        for i in range(sent):  # every one confirmed although `stuck` reads nothing
            await talker.chat(big_text(i))
        await wait_until(lambda: "fell more than 20 messages behind" in server.log, "the drop")
        stuck.stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # read it fast
        received = bytearray()
        while data := await stuck.stream.receive_some(1 << 20):  # it ends: never silent
            received += data
    seen = [json.loads(line) for line in received.split(b"\n")[:-1]]
    messages = [obj["seq"] for obj in seen if obj["type"] == "message"]
    assert messages == list(range(1, len(messages) + 1)) and len(messages) < sent
    assert all(obj["type"] == "message" or obj["code"] == "lagging" for obj in seen)
    assert server.stop() == 0


async def test_resend_through_another_connection_is_acked_with_the_original_seq(
    fork_servers: ServerFactory, clients: Clients
) -> None:
    server = fork_servers.start()
    with trio.fail_after(WAIT_TIMEOUT):
        first = await clients.native(server, "alice")
        second = await clients.native(server, "alice")  # a reconnect, the old one still open
        await first.chat("other")
        seq = await first.chat("once", "a-1")
        assert await second.chat("once", "a-1") == seq
        assert await second.chat("next", "a-2") == seq + 1
    log_lines = (server.data_dir / "chat.log").read_bytes().splitlines()
    assert len(log_lines) == 3
    assert server.stop() == 0


async def test_every_child_is_reaped_after_disconnects_and_after_sigterm(
    fork_servers: ServerFactory, clients: Clients
) -> None:
    server = fork_servers.start()
    with trio.fail_after(WAIT_TIMEOUT):
        for n in range(3):
            await (await clients.native(server, f"u{n}")).chat("hi")
        papaya = await clients.papaya(server)
        await papaya.send_all(b"carol: hello\n")
        await wait_until(lambda: len(children_of(server)) == 8, "a RECV and a SEND per client")
        await clients.close_all()
        await wait_until(lambda: not children_of(server), "every pair reaped after disconnect")
        for n in range(3):
            await (await clients.native(server, f"v{n}")).chat("again")
        await clients.papaya(server)
        await wait_until(lambda: len(children_of(server)) == 8, "the second round's pairs")
    assert server.stop(signal.SIGTERM) == 0
    assert not processes_using(server.data_dir), "a client's process outlived the server"


async def test_trio_and_fork_mode_share_a_data_folder(tmp_path: Path, clients: Clients) -> None:
    trio_servers, fork_servers = ServerFactory(tmp_path, "trio"), ServerFactory(tmp_path, "fork")
    try:
        with trio.fail_after(WAIT_TIMEOUT * 2):
            server = trio_servers.start()
            assert await (await clients.native(server, "alice")).chat("from trio", "t1") == 1
            assert server.stop() == 0
            server = fork_servers.start()
            alice = await clients.native(server, "alice", since=0)
            assert [m["text"] for m in await alice.messages(1)] == ["from trio"]
            assert await alice.chat("from trio", "t1") == 1  # fork mode knows trio's ids
            assert await alice.chat("from fork", "f1") == 2
            assert server.stop() == 0
            server = trio_servers.start()
            bob = await clients.native(server, "bob", since=0)
            assert [m["text"] for m in await bob.messages(2)] == ["from trio", "from fork"]
            assert await (await clients.native(server, "alice")).chat("x", "f1") == 2
            assert server.stop() == 0
    finally:
        trio_servers.cleanup()
        fork_servers.cleanup()


def test_websocket_options_are_refused_in_fork_mode(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "papaya_trio", "serve", "--mode", "fork"]
    options = ["--data-dir", str(tmp_path / "data"), "--ws-ping-interval", "5"]
    done = subprocess.run([*command, *options], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "fork mode serves the TCP dialects only, not HTTP or WebSocket" in done.stderr
    assert "--ws-ping-interval" in done.stderr


async def test_concurrent_writers_under_fsync_always_are_all_acked_and_stored_once(
    fork_servers: ServerFactory, clients: Clients
) -> None:
    """Group commit: writers that share fsyncs are each confirmed once their record is stored."""
    server = fork_servers.start("--fsync", "always")
    writers, per_writer = 8, 25
    acked: dict[str, int] = {}

    async def write(name: str) -> None:
        client = await clients.native(server, name)
        for i in range(per_writer):  # pipelined: the acks come back in order
            await client.send(type="send", text=f"{name} {i}", id=f"{name}-{i}")
        shown: set[int] = set()
        for i in range(per_writer):
            while (obj := await client.receive()) is not None and obj["type"] == "message":
                shown.add(obj["seq"])
            assert obj is not None and obj["id"] == f"{name}-{i}", obj
            assert obj["seq"] in shown, "the message is shown before its sender is confirmed"
            acked[obj["id"]] = obj["seq"]

    with trio.fail_after(WAIT_TIMEOUT * 2):
        async with trio.open_nursery() as nursery:
            for n in range(writers):
                nursery.start_soon(write, f"w{n}")
    assert sorted(acked.values()) == list(range(1, writers * per_writer + 1))
    assert server.stop() == 0
    stored = {}
    for line in (server.data_dir / "chat.log").read_bytes().splitlines():
        crc, _, body = line.partition(b" ")
        assert int(crc, 16) == zlib.crc32(body)
        record = json.loads(body)
        stored[record["id"]] = (record["seq"], record["text"])
    assert stored == {cid: (seq, cid.replace("-", " ")) for cid, seq in acked.items()}


async def test_sighup_leaves_the_server_and_its_clients_alone(
    fork_servers: ServerFactory, clients: Clients
) -> None:
    """`systemctl reload` sends SIGHUP, whose default action would end the parent."""
    server = fork_servers.start()
    with trio.fail_after(WAIT_TIMEOUT):
        alice = await clients.native(server, "alice")
        server.process.send_signal(signal.SIGHUP)
        await wait_until(lambda: "SIGHUP: nothing to reload" in server.log, "the SIGHUP")
        assert await alice.chat("still here") == 1
    assert server.stop() == 0
