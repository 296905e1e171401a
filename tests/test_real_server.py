"""Real `papaya-trio serve` processes on loopback (port 0), real sockets, real signals."""

from __future__ import annotations

import signal

import pytest
import trio

from papaya_trio.records import Record, encode_record
from tests.memory_world import LineClient
from tests.real_server import Dialer, ServerFactory

RECEIVE_TIMEOUT = 15.0


async def receive_until(stream: trio.abc.Stream, marker: bytes, count: int = 1) -> bytes:
    data = b""
    with trio.fail_after(RECEIVE_TIMEOUT):
        while data.count(marker) < count:
            chunk = await stream.receive_some(65536)
            assert chunk, f"stream ended; got {data!r}"
            data += chunk
    return data


async def test_native_and_papaya_clients_chat_together(
    servers: ServerFactory, dial: Dialer
) -> None:
    server = servers.start()
    with trio.fail_after(RECEIVE_TIMEOUT):
        alice = await dial.native(server, "alice")
        await alice.chat("hello, papaya", "a1")
        papaya = await dial.papaya(server)
        assert await receive_until(papaya, b"\n") == b"alice: hello, papaya\n"
        await papaya.send_all(b"carol: hello, native\n")
        got = (await alice.messages(2))[1]
        assert (got["user"], got["text"], got["seq"]) == ("carol", "hello, native", 2)
        # Each live batch ends in one NUL: wait for the first before the second message exists,
        # or a server that reads both at one wake-up rightly sends them as one batch.
        assert await receive_until(papaya, b"\x00") == b"carol: hello, native\x00"
        await alice.chat("one more")
        assert await receive_until(papaya, b"\x00") == b"alice: one more\x00"
    assert server.stop() == 0


async def test_restart_keeps_history_and_since_resumes(
    servers: ServerFactory, dial: Dialer
) -> None:
    server = servers.start()
    with trio.fail_after(RECEIVE_TIMEOUT):
        alice = await dial.native(server, "alice")
        for i in range(5):
            await alice.chat(f"m{i}", f"id{i}")
    assert server.stop() == 0
    server = servers.start()
    with trio.fail_after(RECEIVE_TIMEOUT):
        bob = LineClient(await dial.connect(server.port))
        welcome = await bob.hello("bob", key=server.key, since=2)
        assert welcome["head"] == 5
        assert [m["text"] for m in await bob.messages(3)] == ["m2", "m3", "m4"]
        alice = await dial.native(server, "alice")
        assert await alice.chat("m0", "id0") == 1  # a resend after the restart is deduped
    assert server.stop() == 0


async def test_torn_log_tail_is_truncated_and_reported(
    servers: ServerFactory, dial: Dialer
) -> None:
    server = servers.start()
    with trio.fail_after(RECEIVE_TIMEOUT):
        alice = await dial.native(server, "alice")
        await alice.chat("survives")
    assert server.stop() == 0
    log_path = server.data_dir / "chat.log"
    intact = log_path.read_bytes()
    with log_path.open("ab") as log_file:  # half a record, as a crash mid-write leaves it
        log_file.write(encode_record(Record(2, 0, "mallory", "half written"))[:25])
    server = servers.start()
    assert "cut 25 bytes" in server.log
    assert log_path.read_bytes() == intact
    with trio.fail_after(RECEIVE_TIMEOUT):
        bob = await dial.native(server, "bob", since=0)
        [only] = await bob.messages(1)
        assert only["text"] == "survives"
        assert await bob.chat("after recovery") == 2
    assert server.stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_exits_zero_with_the_log_intact(
    servers: ServerFactory, dial: Dialer, signum: signal.Signals
) -> None:
    server = servers.start()
    with trio.fail_after(RECEIVE_TIMEOUT):
        alice = await dial.native(server, "alice")
        for i in range(20):
            await alice.chat(f"m{i}")
        assert server.stop(signum) == 0
        error = await alice.expect("error")  # told before the connection closed
        assert error["code"] == "shutdown"
    log_lines = (server.data_dir / "chat.log").read_bytes().splitlines(keepends=True)
    assert len(log_lines) == 20 and all(line.endswith(b"\n") for line in log_lines)


async def test_ipv6_and_dual_stack(servers: ServerFactory, dial: Dialer) -> None:
    server = servers.start("--listen", "::1")
    addresses = server.log
    assert "listening tcp 127.0.0.1:" in addresses and "listening tcp [::1]:" in addresses
    v6_port = int(addresses.split("listening tcp [::1]:")[1].split()[0])
    with trio.fail_after(RECEIVE_TIMEOUT):
        client = LineClient(await dial.connect(v6_port, "::1"))
        await client.hello("six", key=server.key)
        assert await client.chat("over ipv6") == 1
    assert server.stop() == 0


async def test_stress_16_clients_50_messages_each(servers: ServerFactory, dial: Dialer) -> None:
    """Every client receives every message exactly once, in log order (the original failed)."""
    server = servers.start()
    clients, per_client = 16, 50
    received: dict[str, list[tuple[int, str]]] = {}

    async def chatter(name: str, ready: trio.Event, go: trio.Event) -> None:
        client = await dial.native(server, name)
        ready.set()
        await go.wait()
        for i in range(per_client):
            await client.send(type="send", text=f"{name} says {i}", id=f"{name}-{i}")
        got = await client.messages(clients * per_client)
        received[name] = [(m["seq"], m["text"]) for m in got]

    with trio.fail_after(120):
        go = trio.Event()
        async with trio.open_nursery() as nursery:
            for n in range(clients):
                ready = trio.Event()
                nursery.start_soon(chatter, f"c{n}", ready, go)
                await ready.wait()
            go.set()
    reference = received["c0"]
    assert [seq for seq, _ in reference] == list(range(1, clients * per_client + 1))
    assert all(stream == reference for stream in received.values())
    for n in range(clients):  # each sender's own messages stored in the order sent
        own = [text for _, text in reference if text.startswith(f"c{n} says")]
        assert own == [f"c{n} says {i}" for i in range(per_client)]
    assert server.stop() == 0
