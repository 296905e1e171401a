"""Admission, idle timeout and rate limits: the whole server over memory streams, under
trio's autojump clock."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from papaya_trio.admission import AdmissionSettings
from tests.memory_world import KEY, LineClient, World, open_world


async def silent_native(world: World) -> LineClient:
    """A keyless client that starts like a native one and then says nothing."""
    client = await world.connect()
    await client.send_raw(b"{")
    return client


async def test_keyless_connections_cannot_take_a_members_place(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    limits = AdmissionSettings(max_connections=4, max_handshakes=8)
    async with open_world(admission=limits) as world:
        alice, _ = await world.join("alice")
        flood = [await silent_native(world) for _ in range(30)]
        await trio.testing.wait_all_tasks_blocked()
        assert world.server.admission.statistics().handshakes == 8  # the rest were evicted
        for name in ("bob", "carol", "dave"):  # the members' budget is untouched
            await world.join(name)
        assert await alice.chat("still here") == 1
        assert world.server.admission.statistics().members == 4
        for client in flood:
            await client.stream.aclose()
    # 22 beyond the budget, and one for bob (then the slot he leaves is free): each once.
    assert "23 evicted" in caplog.text


async def test_handshakers_never_push_out_a_member(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = AdmissionSettings(max_connections=2, max_handshakes=2)
    async with open_world(admission=limits) as world:
        alice, _ = await world.join("alice")
        bob, _ = await world.join("bob")
        for _ in range(10):
            await silent_native(world)
        late = await world.connect()
        await late.send(type="hello", key=KEY, user="eve")
        assert (await late.expect("error"))["code"] == "server_full"
        assert await alice.chat("we are both still here") == 1
        assert [m["text"] for m in await bob.messages(1)] == ["we are both still here"]


async def test_under_pressure_a_silent_handshake_is_closed_sooner(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = AdmissionSettings(max_handshakes=4, pressure_auth_timeout=2.0)
    async with open_world(admission=limits, auth_timeout=10.0) as world:
        lone = await silent_native(world)
        start = trio.current_time()
        assert (await lone.expect("error"))["code"] == "auth_timeout"
        assert trio.current_time() - start == pytest.approx(10.0)
        first, second = await silent_native(world), await silent_native(world)  # 2 of 4
        start = trio.current_time()
        assert await first.receive() is None  # closed without a word, at the short deadline
        assert await second.receive() is None
        assert 1.0 <= trio.current_time() - start <= 2.0


async def test_failed_handshakes_are_summed_up_not_logged_one_by_one(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with open_world(admission=AdmissionSettings(log_interval=10.0)) as world:
        for _ in range(40):
            client = await world.connect()
            await client.send(type="hello", key="x" * 128, user="eve")
            assert (await client.expect("error"))["code"] == "bad_key"
        await trio.sleep(11.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["failed or refused connections in the last 10s: 40 wrong key"]


async def test_a_silent_native_client_is_dropped_after_the_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_world(idle_timeout=60.0) as world:
        silent, _ = await world.join("silent")
        pinger, _ = await world.join("pinger")
        papaya = await world.listener.connect()
        await papaya.send_all(KEY.encode())
        start = trio.current_time()
        for number in range(4):
            await trio.sleep(25.0)
            await pinger.send(type="ping", id=f"p{number}")
            assert (await pinger.expect("pong"))["id"] == f"p{number}"
            if number == 1:  # 50 s: the silent client's 60 s are coming
                error = await silent.expect("error")
                assert (error["code"], error["fatal"]) == ("idle_timeout", True)
                assert trio.current_time() - start == pytest.approx(60.0)
                assert await silent.receive() is None
        assert {s.identity.user for s in world.room.sessions} == {"pinger", None}


async def test_a_member_past_its_rate_is_slowed_while_another_is_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_world(rate_messages=10.0, rate_burst=5) as world:
        flooder, _ = await world.join("flooder")
        calm, _ = await world.join("calm")
        start = trio.current_time()
        for number in range(25):
            await flooder.send(type="send", text=f"flood {number}", id=f"f{number}")
        await trio.sleep(0.45)
        # The burst and the next one at once (the wait comes after a message), then 10/s.
        assert world.room.log.head == 5 + 1 + 4
        assert await calm.chat("hello", "c1") == 11  # stored at once, not queued behind
        assert trio.current_time() - start == pytest.approx(0.45)
        acks = 0
        while acks < 25:
            acks += (await flooder.receive() or {}).get("type") == "ack"
        # 20 beyond the burst at 10 per second: the last is read 2 s after the first.
        assert trio.current_time() - start == pytest.approx(1.9)
        assert world.room.log.head == 26  # slowed down, nothing lost


async def test_the_byte_rate_slows_large_messages(autojump_clock: trio.testing.MockClock) -> None:
    settings = {"max_message_bytes": 1000, "rate_bytes": 1000.0, "rate_burst_bytes": 2000}
    async with open_world(**settings) as world:
        client, _ = await world.join("writer")
        start = trio.current_time()
        for number in range(6):
            await client.chat("x" * 1000, f"w{number}")
        # 2000 bytes at once, then 1000 per second: the sixth is read 3 s after the first.
        assert trio.current_time() - start == pytest.approx(3.0)
