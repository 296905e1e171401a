"""Admission control, liveness and rate limits against real sockets, as an attacker or a
vanished peer would try them. Each test is bounded in time and count and asserts a bound.

The flood and wrong-key tests bind their sockets to 127.0.0.2 ... 127.0.0.200: on Linux the
whole of 127.0.0.0/8 is loopback, so each is a different address to the server.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import trio

from papaya_trio.chatlog import ChatLog
from papaya_trio.keepalive import TcpKeepalive
from papaya_trio.room import Room, RoomSettings
from papaya_trio.server import ChatServer
from papaya_trio.storage import MemoryStorage
from sim.world import KEY, sim_clock_ms
from tests.flood import connect_from, measure_under_flood
from tests.memory_world import LineClient
from tests.real_server import Dialer, ServerFactory

STEP_TIMEOUT = 10.0
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="127.0.0.0/8 is loopback on Linux")


async def closed_without_a_word(stream: trio.SocketStream) -> bool:
    """Whether the server closed `stream` without sending anything (within the timeout)."""
    with trio.fail_after(STEP_TIMEOUT):
        try:
            return await stream.receive_some(1024) == b""
        except trio.BrokenResourceError:  # reset: closed with our byte unread
            return True


async def test_keyless_flood_from_199_addresses_never_keeps_a_member_out(
    trio_servers: ServerFactory,
) -> None:
    # 600 sockets from 199 addresses against 512 handshake slots: the budget is always full,
    # and most of the flood's reconnections are refused (each address holds two or three).
    server = trio_servers.start("--max-handshakes", "512")
    latencies, flood = await measure_under_flood(
        server.port, server.key, sockets=600, attempts=20, warmup=600, pause=0.02
    )
    assert latencies.failures == []
    assert len(latencies.seconds) == 20
    # Generous: the suite shares 2 cores with other work (at a load average of 13 the p99
    # was 2.2 s, at 4 about 0.1 s). docs/security.md has the figures measured with
    # the default budget and the 1,100 sockets.
    assert latencies.percentile(0.99) < 5.0
    assert flood.dropped >= 600  # the flood did run into the budget all along


async def test_per_address_caps_hold(trio_servers: ServerFactory, dial: Dialer) -> None:
    server = trio_servers.start("--max-connections-per-ip", "3", "--max-handshakes-per-ip", "2")
    silent = [await dial.connect(server.port, source="127.0.0.5") for _ in range(2)]
    for stream in silent:
        await stream.send_all(b"{")
    third = await dial.connect(server.port, source="127.0.0.5")
    await third.send_all(b"{")
    assert await closed_without_a_word(third)  # two handshakes from .5 already
    await dial.native(server, "other", source="127.0.0.6")  # another address is not affected
    members = [await dial.native(server, f"m{n}", source="127.0.0.7") for n in range(3)]
    fourth = await dial.connect(server.port, source="127.0.0.7")
    assert await closed_without_a_word(fourth)  # three connections from .7 already
    await members[0].stream.aclose()
    with trio.fail_after(STEP_TIMEOUT):
        while True:  # the server notices the close a moment later
            try:
                await dial.native(server, "back", source="127.0.0.7")
                break
            except (AssertionError, trio.BrokenResourceError):
                await trio.sleep(0.05)


async def test_wrong_key_flood_is_slowed_per_address_and_logged_in_summaries(
    trio_servers: ServerFactory,
) -> None:
    server = trio_servers.start(
        *("--wrong-key-burst", "3", "--wrong-key-rate", "2", "--auth-log-interval", "0.5")
    )
    answered: Counter[str] = Counter()
    closed: Counter[str] = Counter()
    hello = json.dumps({"type": "hello", "key": "x" * 128, "user": "eve"}).encode() + b"\n"

    async def guess(source: str) -> None:
        for _ in range(1000):
            stream = await connect_from(source, server.port)
            try:
                await stream.send_all(hello)
                reply = await stream.receive_some(1024)
            except trio.BrokenResourceError:
                reply = b""
            finally:
                await trio.aclose_forcefully(stream)
            if b"bad_key" in reply:
                answered[source] += 1
            else:
                closed[source] += 1

    sources = [f"127.0.0.{n}" for n in range(20, 30)]
    with trio.move_on_after(1.5):
        async with trio.open_nursery() as nursery:
            for source in sources:
                nursery.start_soon(guess, source)
    assert server.stop() == 0
    for source in sources:
        assert answered[source] <= 3 + 2 * 1.5 + 1  # the burst, the refill, one in flight
    attempts = sum(answered.values()) + sum(closed.values())
    assert attempts >= 100
    lines = server.log.splitlines()
    assert not [line for line in lines if "auth failed" in line]
    summaries = [line for line in lines if "wrong key" in line]
    assert 1 <= len(summaries) <= 1.5 / 0.5 + 2  # one per interval, not one per attempt
    assert "refused: wrong-key limit" in server.log
    assert len(lines) < 20


async def test_a_silent_native_member_is_reaped_after_the_idle_timeout(
    trio_servers: ServerFactory, dial: Dialer
) -> None:
    server = trio_servers.start("--idle-timeout", "1")
    silent = await dial.native(server, "silent")
    start = trio.current_time()
    with trio.fail_after(STEP_TIMEOUT):
        error = await silent.expect("error")
    reaped_after = trio.current_time() - start
    assert error["code"] == "idle_timeout"
    assert 0.9 <= reaped_after <= 2.0
    assert await silent.receive() is None


class RecordingListener(trio.abc.Listener[trio.abc.Stream]):
    """A real TCP listener that keeps the streams it accepted, for inspection."""

    def __init__(self, inner: trio.SocketListener) -> None:
        self.inner = inner
        self.accepted: list[trio.SocketStream] = []

    async def accept(self) -> trio.abc.Stream:
        stream = await self.inner.accept()
        self.accepted.append(stream)
        return stream

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_every_accepted_socket_gets_keepalive() -> None:
    log, _ = await ChatLog.open(MemoryStorage(), clock_ms=sim_clock_ms)
    server = ChatServer(Room(log, KEY, RoomSettings()), keepalive=TcpKeepalive(7, 3, 4))
    [inner] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = RecordingListener(inner)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, [listener])
        client = LineClient(await trio.open_tcp_stream(*inner.socket.getsockname()[:2]))
        await client.hello("alice")
        [accepted] = listener.accepted
        sock = accepted.socket
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 19_000
        await client.stream.aclose()
        server.shutdown()
    await log.aclose()


def _can_unshare_network() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, timeout=10
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare_network(), reason="needs unshare -n (CAP_SYS_ADMIN)")
def test_a_dead_peer_is_reaped_within_the_keepalive_bound() -> None:
    """A real dead peer: the loopback of a private network namespace goes down under an
    open connection, so no packet gets through; keepalive 1 s + 2 x 1 s must reap it."""
    result = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "tests.dead_peer", "--idle", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 0, result.stderr
    reaped = json.loads(result.stdout)
    assert reaped["reason"] == "connection lost"
    assert 2.5 <= reaped["reaped_after"] <= 4.5  # 1 + 2 x 1 s, and the timer's granularity


async def test_a_member_over_its_rate_is_slowed_while_another_is_not(
    trio_servers: ServerFactory, dial: Dialer
) -> None:
    server = trio_servers.start("--rate-messages", "20", "--rate-burst", "10", "--fsync", "never")
    flooder = await dial.native(server, "flooder")
    calm = await dial.native(server, "calm")
    lines = b"".join(
        json.dumps({"type": "send", "text": f"flood {n}", "id": f"f{n}"}).encode() + b"\n"
        for n in range(50)
    )
    start = trio.current_time()
    await flooder.send_raw(lines)
    flood_seqs: list[int] = []

    async def flood_ack() -> None:
        while True:
            reply = await flooder.receive()
            assert reply is not None
            if reply["type"] == "ack":
                flood_seqs.append(reply["seq"])
                return

    with trio.fail_after(STEP_TIMEOUT):
        await flood_ack()  # the flood is being stored
        calm_seq = await calm.chat("not slowed", "c1")
        while len(flood_seqs) < 50:
            await flood_ack()
    flood_done = trio.current_time() - start
    stored_before_calm = sum(seq < calm_seq for seq in flood_seqs)
    # Its one message went straight through: the burst and a few paced ones were ahead of it,
    # not the other 40 (which the flooder's rate holds back for about 2 s).
    assert stored_before_calm < 50 - 10
    assert flood_done >= (50 - 11) / 20 * 0.9  # the burst and one, then 20 per second
