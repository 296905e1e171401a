"""Retention: sealed segments dropped by age and by size, under trio's MockClock, on real files."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from papaya_trio.chatlog import DAY_MS, ChatLog, Retention
from papaya_trio.cli import build_parser, main
from papaya_trio.config import load_config
from papaya_trio.fork.logfile import recover_log
from papaya_trio.logmaint import backup_log, check_log
from papaya_trio.logstore import FsyncPolicy
from papaya_trio.records import Record, RecordScanner, encode_record
from papaya_trio.room import Room, RoomSettings
from papaya_trio.segments import SegmentedFileStorage, sealed_segments
from papaya_trio.server import ChatServer
from papaya_trio.service import ServiceError, open_log_store
from tests.memory_world import KEY, LineClient, MemoryListener

TEXT = "x" * 200  # about 250 bytes a record


def mock_ms() -> int:
    return int(trio.current_time() * 1000)


async def filled_log(folder: Path, retention: Retention, count: int) -> ChatLog:
    """A log with retention holding `count` messages of about 250 bytes."""
    log = await open_log(folder, retention)
    for i in range(count):
        await log.append("u", f"{i} {TEXT}")
    return log


async def open_log(folder: Path, retention: Retention) -> ChatLog:
    log, _ = await ChatLog.open(SegmentedFileStorage(folder), clock_ms=mock_ms, retention=retention)
    return log


async def test_old_segments_are_dropped_by_age_and_numbering_goes_on(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    retention = Retention(days=1, segment_bytes=4096)
    log = await open_log(tmp_path, retention)
    for i in range(60):  # about 4 segments on day 0
        await log.append("old", f"{i} {TEXT}")
    await trio.sleep(DAY_MS / 1000 / 2)
    for i in range(20):  # half a day later
        await log.append("newer", f"{i} {TEXT}")
    assert log.first == 1 and len(sealed_segments(tmp_path)) >= 4
    await trio.sleep(DAY_MS / 1000 * 0.6)  # day 0's segments are now over a day old
    seq = (await log.append("today", "hello")).seq

    assert seq == 81  # dense, never reused
    assert log.first > 1
    kept = await log.read_after(0, 1000)
    assert kept[0].seq == log.first and [r.seq for r in kept] == list(range(log.first, 82))
    assert all(r.user != "old" or r.seq >= log.first for r in kept)
    newest_sealed = sealed_segments(tmp_path)
    assert all(time_ms >= mock_ms() - DAY_MS for _, _, time_ms in newest_sealed)
    await log.aclose()

    reopened = await open_log(tmp_path, retention)  # a restart: same first, same head
    assert (reopened.first, reopened.head) == (log.first, 81)
    assert (await reopened.append("later", "x")).seq == 82
    await reopened.aclose()
    survey = check_log(tmp_path / "chat.log")  # check reads the segments too
    assert survey.intact and (survey.first, survey.last) == (log.first, 82)


async def test_the_size_bound_drops_the_oldest_segments_never_the_active_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    retention = Retention(bytes=20_000, segment_bytes=4096)
    log = await open_log(tmp_path, retention)
    for i in range(400):  # about 100 kB
        await log.append("u", f"{i} {TEXT}")
    files = [*(p for p, _, _ in sealed_segments(tmp_path)), tmp_path / "chat.log"]
    total = sum(p.stat().st_size for p in files)
    assert total <= 20_000 + 4096 + 300  # the bound, plus at most the segment being filled
    assert log.head == 400 and log.first > 300
    assert [r.seq for r in await log.read_after(0, 1000)] == list(range(log.first, 401))
    await log.aclose()


async def test_a_quiet_room_is_trimmed_by_the_background_task(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    log = await filled_log(tmp_path, Retention(days=0.5, segment_bytes=4096), 40)
    before = len(sealed_segments(tmp_path))
    assert before >= 2
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        await trio.sleep(DAY_MS / 1000)  # no appends at all
        nursery.cancel_scope.cancel()
    assert sealed_segments(tmp_path) == []  # all sealed ones aged out; the active one stays
    assert log.first > 1 and log.head == 40
    await log.aclose()


async def test_a_seal_interrupted_between_link_and_rename_is_undone_on_open(
    tmp_path: Path,
) -> None:
    lines = [encode_record(Record(seq, 0, "u", "m")) for seq in (1, 2, 3)]
    (tmp_path / "chat.log").write_bytes(b"".join(lines))
    (tmp_path / "segment-000000000001-000000000000000.log").hardlink_to(tmp_path / "chat.log")
    (tmp_path / "chat.log.next").write_bytes(b"")
    log, _ = await ChatLog.open(SegmentedFileStorage(tmp_path), clock_ms=lambda: 0)
    assert (log.first, log.head) == (1, 3)
    assert sealed_segments(tmp_path) == [] and not (tmp_path / "chat.log.next").exists()
    await log.aclose()


async def test_an_old_single_file_log_opens_with_retention(tmp_path: Path) -> None:
    (tmp_path / "chat.log").write_bytes(
        b"".join(encode_record(Record(seq, 0, "u", f"m{seq}")) for seq in range(1, 6))
    )
    log = await open_log(tmp_path, Retention(days=1, segment_bytes=4096))
    assert (log.first, log.head) == (1, 5)
    assert (await log.append("u", "next")).seq == 6
    await log.aclose()


async def test_since_before_the_oldest_kept_message_gets_history_trimmed_first(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    log = await filled_log(tmp_path, Retention(bytes=8192, segment_bytes=4096), 100)
    assert log.first > 3
    server = ChatServer(Room(log, KEY, RoomSettings()), max_connections=4)
    listener = MemoryListener(trio.testing.memory_stream_pair)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, [listener])
        late = LineClient(await listener.connect())
        await late.hello("late", since=2)
        notice = await late.expect("error")
        assert notice["code"] == "history_trimmed" and notice["fatal"] is False
        assert f"history starts at {log.first}" in notice["message"]
        replay = await late.messages(log.head - log.first + 1)
        assert [m["seq"] for m in replay] == list(range(log.first, log.head + 1))
        current = LineClient(await listener.connect())  # a client that is up to date: no notice
        await current.hello("current", since=log.head)
        await current.send(type="ping", id="p")
        assert (await current.receive() or {}).get("type") == "pong"
        server.shutdown()
    await log.aclose()


async def test_backup_of_a_segmented_log_is_one_verified_file(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    log = await filled_log(data, Retention(bytes=8192, segment_bytes=4096), 50)
    backup = backup_log(data / "chat.log", tmp_path / "copy.log")
    scanner = RecordScanner(after_seq=log.first - 1)
    copied = [s.record.seq for s in scanner.feed((tmp_path / "copy.log").read_bytes())]
    assert copied == list(range(log.first, 51)) and scanner.problem is None
    assert backup.survey.intact
    await log.aclose()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--mode", "fork", "--retention-days", "7"], "trio mode with the file store only"),
        (["--retention-bytes", "1000000", "--store", "redis"], "file store only"),
    ],
)
def test_retention_is_refused_where_it_is_not_supported(
    options: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--data-dir", str(tmp_path), *options]) == 2
    assert message in capsys.readouterr().err


async def make_trimmed_log(folder: Path) -> ChatLog:
    log = await filled_log(folder, Retention(bytes=8192, segment_bytes=4096), 60)
    assert log.first > 1 and sealed_segments(folder)
    await log.aclose()
    return log


async def test_without_retention_a_segmented_log_is_still_read_whole(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    trimmed = await make_trimmed_log(tmp_path)
    segments_before = sealed_segments(tmp_path)
    config = load_config(build_parser().parse_args(["serve", "--data-dir", str(tmp_path)]))
    async with open_log_store(config) as log:
        assert (log.first, log.head) == (trimmed.first, 60)
        assert [r.seq for r in await log.read_after(0, 100)] == list(range(trimmed.first, 61))
        assert (await log.append("u", "more")).seq == 61
    assert sealed_segments(tmp_path) == segments_before  # nothing trimmed without retention


def test_fork_mode_refuses_a_segmented_or_trimmed_log(tmp_path: Path) -> None:
    trio.run(make_trimmed_log, tmp_path, clock=trio.testing.MockClock(autojump_threshold=0))
    with pytest.raises(ServiceError, match="segmented log"):
        recover_log(tmp_path / "chat.log", FsyncPolicy.ALWAYS)
    for segment, _, _ in sealed_segments(tmp_path):
        segment.unlink()  # as if every sealed segment had been trimmed
    with pytest.raises(ServiceError, match="starts at message"):
        recover_log(tmp_path / "chat.log", FsyncPolicy.ALWAYS)
