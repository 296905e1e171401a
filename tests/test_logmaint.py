"""`log check`, `log repair`, `log backup` on damaged logs (in-process and as real commands)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from papaya_trio.logmaint import BackupFailed, MaintenanceError, backup_log, check_log, repair_log
from papaya_trio.records import Record, RecordScanner, decode_record, encode_record
from papaya_trio.salvage import LOST_USER

TEXTS = ["hello", "héllo wörld", "a" * 300, 'quote " and \\ backslash', "日本語", ""]


def original_lines(count: int) -> list[bytes]:
    return [
        encode_record(
            Record(seq, 1_764_000_000_000 + seq, f"u{seq % 3}", TEXTS[seq % len(TEXTS)], f"c{seq}")
        )
        for seq in range(1, count + 1)
    ]


def records_of(path: Path) -> list[Record]:
    """The log's records, checked to be intact and dense from the first one on."""
    data = path.read_bytes()
    first = decode_record(data.split(b"\n")[0]).seq if data else 1
    scanner = RecordScanner(after_seq=first - 1)
    found = [scanned.record for scanned in scanner.feed(data)]
    assert scanner.problem is None and scanner.pending == 0, scanner.problem
    return found


def quarantined(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.glob("chat.log.quarantine-*")))


damage_op = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 0.9999), st.integers(0, 7)),
    st.tuples(st.just("zeros"), st.floats(0, 0.9999), st.integers(1, 700)),
)


@given(
    count=st.integers(1, 40),
    damage=st.lists(damage_op, min_size=1, max_size=5),
    torn=st.booleans(),
)
def test_repair_keeps_every_untouched_record_and_quarantines_every_cut_byte(
    count: int, damage: list[tuple[str, float, int]], torn: bool
) -> None:
    lines = original_lines(count)
    data = bytearray(b"".join(lines))
    for kind, where, amount in damage:
        offset = int(where * len(data))
        if kind == "flip":
            data[offset] ^= 1 << amount
        else:
            data[offset : offset + amount] = bytes(len(data[offset : offset + amount]))
    if torn:
        data = data[: len(data) - len(lines[-1]) // 2]  # cut inside the last record
    starts = [sum(len(line) for line in lines[:i]) for i in range(count)]
    untouched = {
        i + 1
        for i, line in enumerate(lines)
        if bytes(data[starts[i] : starts[i] + len(line)]) == line
    }
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "chat.log"
        log.write_bytes(bytes(data))
        before = check_log(log)
        assert before.intact == (bytes(data) == b"".join(lines))  # changed bytes are seen

        repair = repair_log(log)

        # Bytes in = intact bytes kept + bytes quarantined, and the quarantine holds the rest.
        assert repair.kept_bytes + repair.quarantined_bytes == len(data)
        assert len(quarantined(Path(folder))) == repair.quarantined_bytes
        after = records_of(log)
        # Dense (records_of checks it); a log may start above 1 (damage before the first
        # intact record leaves no marker: numbers below the first are never reused anyway).
        originals = {seq: lines[seq - 1] for seq in range(1, count + 1)}
        for record in after:
            assert record.user == LOST_USER or encode_record(record) == originals[record.seq]
        kept = {r.seq for r in after if r.user != LOST_USER}
        assert untouched <= kept  # no intact record is ever lost
        assert check_log(log).intact


def test_duplicated_numbers_from_two_writers_keep_the_first_and_quarantine_the_second(
    tmp_path: Path,
) -> None:
    first = original_lines(6)
    second = [encode_record(Record(seq, 0, "intruder", f"dup {seq}")) for seq in (4, 5)]
    log = tmp_path / "chat.log"
    log.write_bytes(b"".join(first[:5]) + second[0] + second[1] + first[5])
    survey = check_log(log)
    assert not survey.intact and "sequence number 4 repeats" in survey.damaged[0].reason

    repair = repair_log(log)

    assert [r.text for r in records_of(log)] == [r.text for r in map(decode_record, first)]
    assert quarantined(tmp_path) == second[0] + second[1]
    assert repair.markers == []


def test_a_zero_block_over_records_becomes_markers_for_exactly_their_numbers(
    tmp_path: Path,
) -> None:
    lines = original_lines(10)
    data = bytearray(b"".join(lines))
    start = sum(map(len, lines[:3])) + 5  # inside record 4 ...
    end = sum(map(len, lines[:6])) + 3  # ... to inside record 7
    data[start:end] = bytes(end - start)
    log = tmp_path / "chat.log"
    log.write_bytes(bytes(data))

    repair = repair_log(log)

    after = records_of(log)
    assert [r.seq for r in after] == list(range(1, 11))
    assert [r.seq for r in after if r.user == LOST_USER] == [4, 5, 6, 7]
    assert repair.markers == [4, 5, 6, 7]
    assert "quarantine" in after[3].text and str(repair.quarantine) in after[3].text
    assert quarantined(tmp_path) == bytes(data[sum(map(len, lines[:3])) : sum(map(len, lines[:7]))])


def test_an_intact_log_is_left_alone(tmp_path: Path) -> None:
    log = tmp_path / "chat.log"
    log.write_bytes(b"".join(original_lines(5)))
    stat = log.stat()
    repair = repair_log(log)
    assert repair.survey.intact and repair.quarantine is None
    assert log.stat().st_ino == stat.st_ino and not list(tmp_path.glob("*quarantine*"))


def test_backup_refuses_an_existing_destination_and_a_damaged_log(tmp_path: Path) -> None:
    log = tmp_path / "chat.log"
    lines = original_lines(3)
    log.write_bytes(lines[0] + b"x" + lines[1][1:] + lines[2])
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(MaintenanceError, match="exists"):
        backup_log(log, tmp_path / "taken")
    assert (tmp_path / "taken").read_text() == "mine"
    with pytest.raises(BackupFailed, match="damaged bytes"):
        backup_log(log, tmp_path / "copy")
    assert not list(tmp_path.glob("copy*"))


def test_backup_leaves_out_a_torn_end(tmp_path: Path) -> None:
    log = tmp_path / "chat.log"
    lines = original_lines(4)
    log.write_bytes(b"".join(lines[:3]) + lines[3][:10])
    backup = backup_log(log, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == b"".join(lines[:3])
    assert backup.left_out == 10 and backup.survey.last == 3


def run_log_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "papaya_trio", "log", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_exit_codes_a_script_can_use(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    missing = run_log_command("check", "--data-dir", str(data))
    assert missing.returncode == 2 and "no log file" in missing.stderr
    lines = original_lines(3)
    (data / "chat.log").write_bytes(b"".join(lines))
    intact = run_log_command("check", "--data-dir", str(data))
    assert intact.returncode == 0 and "3 messages (1..3)" in intact.stdout
    (data / "chat.log").write_bytes(lines[0] + lines[1].replace(b"aaaa", b"aaab", 1) + lines[2])
    damaged = run_log_command("check", "--data-dir", str(data))
    assert damaged.returncode == 1
    assert f"damaged bytes {len(lines[0])}..{len(lines[0]) + len(lines[1]) - 1}" in damaged.stdout
    repaired = run_log_command("repair", "--data-dir", str(data))
    assert repaired.returncode == 0, repaired.stderr
    assert "moved" in repaired.stdout and "markers" in repaired.stdout and "2" in repaired.stdout
    assert run_log_command("check", "--data-dir", str(data)).returncode == 0
