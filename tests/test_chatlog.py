"""The append-only log: ordering, durability, dedupe, recovery and storage failures."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from papaya_trio.chatlog import ChatLog, FsyncPolicy, LogCorrupted, StorageFailed
from papaya_trio.records import Record, encode_record
from papaya_trio.storage import FileStorage, MemoryStorage
from tests.memory_world import trio_clock_ms


async def open_log(storage: MemoryStorage, **options: object) -> ChatLog:
    log, _ = await ChatLog.open(storage, clock_ms=trio_clock_ms, **options)  # type: ignore[arg-type]
    return log


class CountingStorage(MemoryStorage):
    """Counts syncs and makes each take simulated time, so appends can pile up."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs = 0

    async def sync(self) -> None:
        self.syncs += 1
        await trio.sleep(0.01)
        await super().sync()


class FailingStorage(MemoryStorage):
    """Fails the next append (after writing part of it) or sync when told to."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_append = False
        self.fail_sync = False

    async def append(self, data: bytes) -> None:
        if self.fail_append:
            await super().append(data[:7])  # a torn write, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device")
        await super().append(data)

    async def sync(self) -> None:
        if self.fail_sync:
            raise OSError(errno.EIO, "Input/output error")
        await super().sync()


async def test_appends_get_consecutive_sequence_numbers() -> None:
    log = await open_log(MemoryStorage())
    seqs = [(await log.append("alice", f"m{i}")).seq for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert [r.text for r in await log.read_after(2, 10)] == ["m2", "m3", "m4"]
    assert await log.read_after(5, 10) == []


async def test_with_fsync_always_a_record_is_durable_when_append_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = CountingStorage()
    log = await open_log(storage)
    published: list[int] = []
    log.on_visible = published.append
    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(log.append, "u", f"m{i}")
    assert storage.synced == len(storage.data)
    assert log.head == 20
    # concurrent appends share fsyncs: 20 appends, far fewer syncs
    assert storage.syncs < 5
    assert published == sorted(published) and published[-1] == 20


async def test_with_fsync_always_readers_never_see_unsynced_records(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = CountingStorage()
    log = await open_log(storage)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.append, "u", "m")
        await trio.testing.wait_all_tasks_blocked()  # written, waiting for its fsync
        assert len(storage.data) > 0 and storage.synced == 0
        assert log.head == 0 and await log.read_after(0, 10) == []
    assert log.head == 1


async def test_with_fsync_never_records_are_visible_at_once() -> None:
    storage = MemoryStorage()
    log = await open_log(storage, fsync=FsyncPolicy.NEVER)
    await log.append("u", "m")
    assert log.head == 1 and storage.synced == 0
    await log.aclose()  # closing syncs anyway
    assert storage.synced == len(storage.data)


async def test_interval_sync(autojump_clock: trio.testing.MockClock) -> None:
    storage = MemoryStorage()
    log = await open_log(storage, fsync=FsyncPolicy.INTERVAL)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run_interval_sync, 1.0)
        await log.append("u", "m")
        assert storage.synced == 0
        await trio.sleep(1.5)
        assert storage.synced == len(storage.data)
        nursery.cancel_scope.cancel()


async def test_resend_is_not_stored_twice_even_after_restart() -> None:
    storage = MemoryStorage()
    log = await open_log(storage)
    assert (await log.append("alice", "hi", "id-1")).seq == 1
    again = await log.append("alice", "hi", "id-1")
    assert (again.seq, again.duplicate) == (1, True)
    assert (await log.append("bob", "hi", "id-1")).seq == 2  # ids are per user
    restarted = await open_log(storage.after_crash())
    assert (await restarted.append("alice", "hi", "id-1")).seq == 1


async def test_reading_old_records_from_storage_in_batches() -> None:
    storage = MemoryStorage()
    log = await open_log(storage, cache_records=10)
    for i in range(1000):
        await log.append("u", f"m{i}")
    reopened = await open_log(storage, cache_records=10)
    cursor, seen = 0, []
    while batch := await reopened.read_after(cursor, 64):
        assert len(batch) <= 64
        seen += [r.seq for r in batch]
        cursor = batch[-1].seq
    assert seen == list(range(1, 1001))
    assert [r.seq for r in await reopened.read_after(300, 3)] == [301, 302, 303]
    assert [r.text for r in reopened.recent(2)] == ["m998", "m999"]


async def test_torn_tail_is_truncated_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    good = encode_record(Record(1, 0, "alice", "kept")) + encode_record(Record(2, 0, "b", "x"))
    torn = encode_record(Record(3, 0, "alice", "lost in a crash"))[:-9]
    storage = MemoryStorage(good + torn)
    log, recovery = await ChatLog.open(storage, clock_ms=trio_clock_ms)
    assert (recovery.records, recovery.truncated_bytes) == (2, len(torn))
    assert bytes(storage.data) == good
    assert "cut" in caplog.text and "torn" in caplog.text and "ERROR" not in caplog.text
    assert recovery.lost == 0  # a torn record was never acknowledged: no marker
    assert (await log.append("alice", "next")).seq == 3


async def test_corrupt_last_record_is_quarantined_and_its_number_never_reused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = encode_record(Record(1, 0, "alice", "kept"))
    bad = bytearray(encode_record(Record(2, 0, "alice", "flipped")))
    bad[-4] ^= 0x20
    storage = MemoryStorage(good + bytes(bad))
    kept: list[bytes] = []

    def quarantine(data: bytes) -> str:
        kept.append(data)
        return "/data/chat.log.quarantine-x"

    log, recovery = await ChatLog.open(storage, clock_ms=trio_clock_ms, quarantine=quarantine)
    assert recovery.records == 1 and recovery.problem == "record checksum does not match"
    assert (recovery.lost, kept) == (1, [bytes(bad)])
    # Number 2 may have been acknowledged: a marker takes it, the next message gets 3.
    marker = (await log.read_after(1, 1))[0]
    assert marker.seq == 2 and "lost" in marker.text and "quarantine-x" in marker.text
    assert (await log.append("bob", "next")).seq == 3
    assert "ERROR" in caplog.text and "/data/chat.log.quarantine-x" in caplog.text
    reopened, again = await ChatLog.open(storage, clock_ms=trio_clock_ms)
    assert (again.records, again.truncated_bytes, reopened.head) == (3, 0, 3)


async def test_damage_before_good_records_refuses_to_start() -> None:
    records = [encode_record(Record(i, 0, "u", f"m{i}")) for i in (1, 2, 3)]
    damaged = records[0] + b"garbage\n" + records[1] + records[2]
    storage = MemoryStorage(damaged)
    with pytest.raises(LogCorrupted, match="papaya-trio log repair"):
        await ChatLog.open(storage, clock_ms=trio_clock_ms)
    assert bytes(storage.data) == damaged


async def test_a_record_glued_to_damage_still_counts_as_intact_and_refuses_the_cut() -> None:
    one, two, three = (encode_record(Record(i, 0, "u", f"m{i}")) for i in (1, 2, 3))
    glued = one + two[:-1] + b"\x0b" + three  # a flipped newline makes one line of two
    storage = MemoryStorage(glued)
    with pytest.raises(LogCorrupted):
        await ChatLog.open(storage, clock_ms=trio_clock_ms)
    assert bytes(storage.data) == glued


async def test_disk_full_stores_nothing_and_the_log_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)
    storage = FailingStorage()
    log = await open_log(storage)
    await log.append("u", "one")
    storage.fail_append = True
    with pytest.raises(StorageFailed, match="No space left"):
        await log.append("u", "two")
    storage.fail_append = False
    assert (await log.append("u", "three")).seq == 2
    reopened, recovery = await ChatLog.open(storage, clock_ms=trio_clock_ms)
    assert recovery.truncated_bytes == 0
    assert [r.text for r in await reopened.read_after(0, 10)] == ["one", "three"]


async def failed_second_fsync() -> tuple[FailingStorage, ChatLog]:
    """A log that stored "one", then failed the fsync of "two" (still in the file)."""
    storage = FailingStorage()
    log = await open_log(storage)
    await log.append("u", "one")
    storage.fail_sync = True
    with pytest.raises(StorageFailed, match="sync"):
        await log.append("u", "two")
    storage.fail_sync = False
    return storage, log


async def test_fsync_failure_makes_the_log_read_only() -> None:
    _, log = await failed_second_fsync()
    with pytest.raises(StorageFailed, match="read-only"):
        await log.append("u", "three")
    assert log.head == 1
    assert [r.text for r in await log.read_after(0, 10)] == ["one"]


async def test_a_restart_syncs_records_a_failed_fsync_left_behind() -> None:
    """A record whose fsync failed is still in the file; the next start shows it, so it
    must make it durable first: after a power cut it is still there."""
    storage, _ = await failed_second_fsync()
    restarted = await open_log(storage)
    assert restarted.head == 2
    survivor = await open_log(storage.after_crash())
    assert [r.text for r in await survivor.read_after(0, 10)] == ["one", "two"]


async def test_a_restart_that_cannot_sync_what_it_found_refuses_to_open() -> None:
    storage = FailingStorage()
    log = await open_log(storage)
    await log.append("u", "one")
    storage.fail_sync = True
    with pytest.raises(StorageFailed, match="could not sync the log it found"):
        await open_log(storage)


async def test_file_storage_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    log, _ = await ChatLog.open(FileStorage(path), clock_ms=trio_clock_ms)
    await log.append("alice", "on disk")
    await log.aclose()
    assert path.stat().st_mode & 0o777 == 0o600
    reopened, recovery = await ChatLog.open(FileStorage(path), clock_ms=trio_clock_ms)
    assert recovery.records == 1
    [record] = await reopened.read_after(0, 10)
    assert (record.user, record.text) == ("alice", "on disk")
    await reopened.aclose()


async def test_a_failing_repair_at_start_is_reported_not_crashed() -> None:
    storage = FailingStorage()
    storage.data += encode_record(Record(1, 0, "u", "ok")) + b"torn"
    storage.fail_sync = True
    with pytest.raises(StorageFailed, match="damaged tail"):
        await ChatLog.open(storage, clock_ms=trio_clock_ms)


@given(
    count=st.integers(1, 12),
    flips=st.lists(st.tuples(st.floats(0, 0.9999), st.integers(0, 7)), max_size=3),
    cut=st.floats(0, 1),
)
def test_start_up_keeps_every_cut_byte_and_never_reuses_a_complete_records_number(
    count: int, flips: list[tuple[float, int]], cut: float
) -> None:
    """Damage confined to the last record (flips, a torn end): bytes in = kept + quarantined."""
    lines = [encode_record(Record(seq, 0, "u", f"message {seq}")) for seq in range(1, count + 1)]
    last = bytearray(lines[-1])
    for where, bit in flips:
        last[int(where * len(last))] ^= 1 << bit
    last = last[: max(1, int(cut * len(last)))] if cut < 1 else last
    data = b"".join(lines[:-1]) + bytes(last)
    kept: list[bytes] = []

    def quarantine(cut_bytes: bytes) -> str:
        kept.append(cut_bytes)
        return "q"

    async def scenario() -> None:
        storage = MemoryStorage(data)
        log, recovery = await ChatLog.open(storage, clock_ms=lambda: 0, quarantine=quarantine)
        assert data[: len(data) - recovery.truncated_bytes] + b"".join(kept) == data
        assert recovery.records >= count - 1  # no intact record before the damage is lost
        complete_lines = data.count(b"\n")
        assert (await log.append("u", "next")).seq == complete_lines + 1

    trio.run(scenario)
