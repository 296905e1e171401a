"""Fork mode's log writer on a real file: a dead writer's torn record is quarantined, not lost."""

from __future__ import annotations

from pathlib import Path

from papaya_trio.fork.logfile import DurableEnd, LogFile, LogWriter, open_index
from papaya_trio.logstore import FsyncPolicy
from papaya_trio.records import Record, RecordScanner, encode_record


def test_a_torn_record_left_by_a_dead_writer_goes_to_quarantine(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    good = encode_record(Record(1, 0, "alice", "kept"))
    torn = encode_record(Record(2, 0, "bob", "died mid-write"))[:15]
    path.write_bytes(good)
    log = LogFile(path)
    index = open_index(log)
    with path.open("ab") as other_writer:  # another RECV process dies after a partial write
        other_writer.write(torn)
    writer = LogWriter(log, index, DurableEnd(FsyncPolicy.NEVER, index.end), lambda: 0)
    try:
        assert writer.append("carol", "next").seq == 2
    finally:
        writer.close()
        log.close()
    quarantines = list(tmp_path.glob("chat.log.quarantine-*"))
    assert [q.read_bytes() for q in quarantines] == [torn]
    scanner = RecordScanner()
    texts = [s.record.text for s in scanner.feed(path.read_bytes())]
    assert texts == ["kept", "next"] and scanner.problem is None and scanner.pending == 0
