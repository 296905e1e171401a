"""The shared-store simulation: the simulated Redis under the real `RedisLog`, and the
`shared-store` profile (three hosts on one store) keeping every invariant."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from papaya_trio.logstore import FsyncPolicy, StorageFailed
from papaya_trio.redislog import RedisLog
from sim.profiles import profile_for
from sim.runner import run_seed
from sim.sharedstore import STREAM, SharedWorld, read_stream
from sim.simredis import Durability, SharedStore, SimRedis, SimRedisClient
from sim.trace import Trace

TIMEOUT = 2.0


def make_store(durability: Durability, **faults: object) -> SimRedis:
    trace = Trace(lambda: (trio.current_time(), 0))
    return SimRedis(random.Random(1), SharedStore(durability, **faults), trace)  # type: ignore[arg-type]


async def open_log(store: SimRedis, name: str, *, replicas: int = 0) -> RedisLog:
    fsync = FsyncPolicy.INTERVAL if store.durability is Durability.EVERYSEC else FsyncPolicy.ALWAYS
    log = RedisLog(
        SimRedisClient(store, random.Random(name), TIMEOUT),  # type: ignore[arg-type]
        "papaya",
        clock_ms=lambda: int(trio.current_time() * 1000),
        fsync=fsync,
        replicas=replicas,
        timeout=TIMEOUT,
        cache_records=64,
        dedupe_entries=1000,
    )
    await log._load()
    return log


def replica_lag(store: SimRedis, seconds: float) -> None:
    """From now on every write reaches the replica `seconds` after it is made."""
    store.faults = replace(store.faults, replication_lag=(seconds, seconds), slow_replica=0.0)


def texts(store: SimRedis) -> list[str]:
    return [r.text for r in read_stream(store.entries(STREAM))]


async def test_two_servers_share_dense_numbers_and_store_a_resend_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = make_store(Durability.AOF_ALWAYS)
    one, two = await open_log(store, "one"), await open_log(store, "two")
    results: dict[str, int] = {}

    async def send(log: RedisLog, text: str, client_id: str) -> None:
        results[text] = (await log.append("ann", text, client_id)).seq

    async with trio.open_nursery() as nursery:
        for n in range(10):
            nursery.start_soon(send, one if n % 2 else two, f"m{n}", f"id{n}")
    assert sorted(results.values()) == list(range(1, 11))
    again = await two.append("ann", "m3", "id3")  # a resend through the other server
    assert (again.seq, again.duplicate) == (results["m3"], True)
    assert [r.seq for r in read_stream(store.entries(STREAM))] == list(range(1, 11))
    assert [texts(store)[results[t] - 1] for t in results] == list(results)


async def test_a_partition_fails_the_append_and_the_reader_resumes(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = make_store(Durability.AOF_ALWAYS)
    writer, reader = await open_log(store, "writer"), await open_log(store, "reader")
    heads: list[int] = []
    reader.on_visible = heads.append
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader.run)
        await writer.append("ann", "before", "a")
        store.outage(3.0, crash=False)
        started = trio.current_time()
        with pytest.raises(StorageFailed):
            await writer.append("ann", "during", "b")
        assert trio.current_time() - started == pytest.approx(TIMEOUT, abs=0.01)
        await trio.sleep(3.0)  # the store is back; the writer resends
        assert (await writer.append("ann", "during", "b")).seq == 2
        await trio.sleep(6.0)  # the reader's backoff is at most RETRY_MAX
        nursery.cancel_scope.cancel()
    assert texts(store) == ["before", "during"]
    assert heads == [1, 2] and reader.recent(5)[-1].text == "during"


async def test_aof_always_restart_keeps_every_acknowledged_entry(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = make_store(Durability.AOF_ALWAYS)
    log = await open_log(store, "one")
    for n in range(20):
        await log.append("ann", f"m{n}", f"id{n}")
    store.outage(0.5, crash=True)
    assert store.lost == 0 and len(texts(store)) == 20


async def test_replica_wait_failover_loses_only_what_was_not_confirmed(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Every write reaches the replica late: WAIT (1 s, half the timeout) never sees it copied.
    store = make_store(Durability.REPLICA_WAIT, replication_lag=(5.0, 5.0), slow_replica=0.0)
    log = await open_log(store, "one", replicas=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)  # the reader learns what the primary holds
        with pytest.raises(StorageFailed, match="replicas"):
            await log.append("ann", "unconfirmed", "a")
        assert texts(store) == ["unconfirmed"]  # stored on the primary, not confirmed
        replica_lag(store, 0.01)
        await trio.sleep(5.0)  # now copied: a resend is confirmed with its number
        assert (await log.append("ann", "unconfirmed", "a")).seq == 1
        replica_lag(store, 5.0)
        with pytest.raises(StorageFailed):
            await log.append("ann", "not yet copied", "b")
        await trio.sleep(0.1)
        assert log.head == 2  # shown to this server's clients, never confirmed
        store.outage(0.5, crash=True)  # failover to the replica
        assert texts(store) == ["unconfirmed"] and store.lost == 1
        await trio.sleep(0.5)
        # This server had seen entry 2, which the stream lost: it refuses to number anew.
        with pytest.raises(StorageFailed, match="PAPAYA_LOST"):
            await log.append("ann", "after", "c")
        assert log.broken is not None
        nursery.cancel_scope.cancel()


async def test_everysec_crash_may_lose_confirmed_entries(autojump_clock: trio.abc.Clock) -> None:
    store = make_store(Durability.EVERYSEC, replication_lag=(5.0, 5.0), slow_replica=0.0)
    log = await open_log(store, "one")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.run_faults, lambda: False)  # the everysec ticker
        await log.append("ann", "synced", "a")
        await trio.sleep(1.5)
        await log.append("ann", "confirmed, not synced", "b")
        store.outage(0.5, crash=True)
        nursery.cancel_scope.cancel()
    assert texts(store) in (["synced"], [])  # a restart or a failover: the tail is gone
    assert store.lost >= 1


async def test_a_script_that_the_simulated_redis_lacks_is_a_clear_error(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = make_store(Durability.AOF_ALWAYS)
    client = SimRedisClient(store, random.Random(0), TIMEOUT)
    script = client.register_script("return redis.call('FLUSHALL')")
    with pytest.raises(Exception, match="no 'FLUSHALL'"):
        await script(keys=[], args=[])


# aof-always, replica-wait, everysec: seeds with store outages (seed 8 loses a tail of 38).
@pytest.mark.parametrize("seed", [0, 1, 8])
def test_shared_store_seed_keeps_every_invariant(seed: int) -> None:
    result, world = run_seed(seed, "shared-store")
    assert result.failure is None, result.report(None)
    assert isinstance(world, SharedWorld)
    assert world.store.durability is list(Durability)[seed % 3]
    assert result.delivered > 0 and world.store.outages > 0
    assert len(Counter(world.cluster.host_of.values())) == 3  # clients used every host
    assert all(host.lives >= 1 for host in world.hosts)


def test_shared_store_same_seed_same_trace() -> None:
    first, _ = run_seed(4, "shared-store")
    again, _ = run_seed(4, "shared-store")
    assert first.failure is None
    assert first.digest == again.digest


def test_hosts_that_saw_entries_the_store_lost_refuse_rather_than_diverge(
    tmp_path: Path,
) -> None:
    # No restart at a loss: the hosts that had learned entries a failover lost find out by
    # themselves (the reader checks its head's entry after the outage), refuse appends and
    # reads, and the simulated operator restarts them. Before, they went on serving the lost
    # entries while other hosts numbered new messages the same (no-duplicates failed).
    profile = profile_for("shared-store", 1)
    assert profile.shared_store is not None
    store = replace(profile.shared_store, restart_hosts_on_loss=False)
    result, world = run_seed(1, profile=replace(profile, shared_store=store))
    assert isinstance(world, SharedWorld) and world.store.lost > 0
    assert result.failure is None, result.report(None)
    world.trace.write(tmp_path / "trace.jsonl")
    events = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    refusals = [e for e in events if "log refuses appends until restart" in e.get("message", "")]
    assert refusals and all("is not the one this server has seen" in e["message"] for e in refusals)
    assert any(e["kind"] == "operator_restart" for e in events)


async def test_a_reader_finds_its_head_lost_and_the_log_refuses(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = make_store(Durability.REPLICA_WAIT, replication_lag=(0.01, 0.01), slow_replica=0.0)
    one = await open_log(store, "one", replicas=1)
    two = await open_log(store, "two", replicas=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one.run)
        await one.append("ann", "copied", "a")
        replica_lag(store, 5.0)
        with pytest.raises(StorageFailed, match="replicas"):
            await two.append("bob", "shown, not copied", "b")
        await trio.sleep(0.1)
        assert one.head == 2  # one's clients were shown entry 2
        store.outage(0.5, crash=True)  # failover: entry 2 is gone
        await trio.sleep(0.5)
        replica_lag(store, 0.01)
        two = await open_log(store, "two again", replicas=1)  # a server started afresh
        assert (await two.append("cy", "a new number 2", "c")).seq == 2
        await trio.sleep(6.0)  # the reader's backoff is at most RETRY_MAX
        assert one.broken is not None and "entry 2 in the stream is not" in one.broken
        assert one.head == 2  # it learns nothing after a history that is gone
        with pytest.raises(StorageFailed, match="unusable until restart"):
            await one.read_after(0, 10)
        with pytest.raises(StorageFailed, match="refuses messages"):
            await one.append("ann", "refused", "d")
        nursery.cancel_scope.cancel()
    assert texts(store) == ["copied", "a new number 2"]


async def test_an_append_after_the_stream_was_renumbered_past_the_head_is_refused(
    autojump_clock: trio.abc.Clock,
) -> None:
    # No reader runs here: the append script itself checks the entry at this server's head.
    store = make_store(Durability.REPLICA_WAIT, replication_lag=(0.01, 0.01), slow_replica=0.0)
    one = await open_log(store, "one", replicas=1)
    await one.append("ann", "copied", "a")
    replica_lag(store, 5.0)
    with pytest.raises(StorageFailed, match="replicas"):
        await one.append("ann", "not copied", "b")
    await one.catch_up(2)  # learnt (as for a client resuming with `since`), so shown
    assert one.head == 2
    store.outage(0.5, crash=True)
    await trio.sleep(0.5)
    replica_lag(store, 0.01)
    two = await open_log(store, "two", replicas=1)
    for n in range(2):  # the stream grows past one's head (2) with other messages
        await two.append("bob", f"new {n}", f"b{n}")
    with pytest.raises(StorageFailed, match="entry 2 in the stream is not the one"):
        await one.append("ann", "would follow a history that is gone", "c")
    assert one.broken is not None
    assert texts(store) == ["copied", "new 0", "new 1"]


async def test_a_resend_through_another_server_is_confirmed_only_once_copied(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Redis's WAIT waits for the calling connection's own last write. A resend answered from
    # the ids set writes too (after the original, in the one replication stream), so WAIT on
    # another server's connection covers the original entry as well.
    store = make_store(Durability.REPLICA_WAIT, replication_lag=(5.0, 5.0), slow_replica=0.0)
    one = await open_log(store, "one", replicas=1)
    two = await open_log(store, "two", replicas=1)
    with pytest.raises(StorageFailed, match="replicas"):
        await one.append("ann", "m", "id1")
    started = trio.current_time()
    with pytest.raises(StorageFailed, match="replicas"):
        await two.append("ann", "m", "id1")  # the client resends through another server
    assert trio.current_time() - started >= TIMEOUT / 2  # WAIT waited for the copy, in vain
    replica_lag(store, 0.01)
    await trio.sleep(5.0)  # the original has reached the replica: now the resend is confirmed
    confirmed = await two.append("ann", "m", "id1")
    assert (confirmed.seq, confirmed.duplicate) == (1, True)
    store.outage(0.5, crash=True)  # failover to the replica
    assert texts(store) == ["m"]
