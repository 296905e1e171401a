"""Log maintenance on the file store: `papaya-trio log check`, `log repair`, `log backup`.

Theory of operation
-------------------
All three read the log through `salvage.Salvager`, which splits the bytes into intact records
and damaged bytes without losing or inventing any.

- **check** reads the log up to a record boundary (the file's size taken under ``flock(LOCK_SH)``,
  which no writer holds while it appends, see docs/log-format.md) and reports every damaged span
  and every gap in the numbering. It only reads, so it is safe while a server runs. A torn last
  line found while a server runs is a write in progress only if it appeared after that size,
  which check never reads; a torn line before it is damage.
- **repair** takes the log's exclusive lock (`loglock`: refused while a server runs) and writes
  a new log beside the old one: every intact record, byte for byte, plus a lost-message marker
  (`salvage.lost_record`) for each number lost to damage, so the numbering stays dense and no
  acknowledged number is ever given to another message. Every damaged byte goes, in order, to
  a quarantine file beside the log (``chat.log.quarantine-<UTC time>``): the old log's bytes are
  exactly the intact records kept plus the quarantine. Both files are fsynced before the new
  log replaces the old one (an atomic rename, then the folder is fsynced).
- **backup** copies the log up to a record boundary taken under ``LOCK_SH`` (so a running
  server's appends are never half copied and never blocked for longer than an ``fstat``), then
  reads the copy back and checks every record and the numbering before renaming it into place.
  A torn fragment a dead fork-mode writer left at the end is not copied.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from papaya_trio.loglock import LogInUse, try_lock
from papaya_trio.records import encode_record
from papaya_trio.salvage import Damaged, Piece, Salvager, lost_count, lost_record
from papaya_trio.segments import fsync_folder, sealed_segments

READ_CHUNK = 1024 * 1024
QUARANTINE_TAG = ".quarantine-"
MAX_NAME_ATTEMPTS = 100


class MaintenanceError(Exception):
    """The command cannot run as asked (no log, destination exists, log in use)."""


class BackupFailed(Exception):
    """The copy could not be made or did not verify; nothing was left at the destination."""


@dataclass(frozen=True, slots=True)
class Span:
    """Consecutive damaged bytes of the log."""

    offset: int
    length: int
    reason: str


@dataclass(slots=True)
class Survey:
    """What a pass over the log found."""

    size: int = 0
    records: int = 0
    first: int | None = None
    last: int = 0
    damaged: list[Span] = field(default_factory=list)
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (first missing, last missing)

    @property
    def intact(self) -> bool:
        """No damaged byte and no missing number."""
        return not self.damaged and not self.gaps

    def take(self, piece: Piece) -> None:
        """Account for the next piece of the log."""
        if isinstance(piece, Damaged):
            previous = self.damaged[-1] if self.damaged else None
            if previous is not None and previous.offset + previous.length == piece.offset:
                merged = previous.length + len(piece.data)
                self.damaged[-1] = Span(previous.offset, merged, previous.reason)
            else:
                self.damaged.append(Span(piece.offset, len(piece.data), piece.reason))
            return
        seq = piece.record.seq
        if self.first is not None and seq != self.last + 1:
            self.gaps.append((self.last + 1, seq - 1))
        self.records += 1
        self.first = seq if self.first is None else self.first
        self.last = seq

    def lines(self, name: str) -> list[str]:
        """The report, one line each: a summary, then every damaged span and gap."""
        numbers = f" ({self.first}..{self.last})" if self.first is not None else ""
        state = "intact" if self.intact else "DAMAGED"
        out = [f"{name}: {self.records} messages{numbers}, {self.size} bytes: {state}"]
        for span in self.damaged:
            end = span.offset + span.length - 1
            out.append(
                f"{name}: damaged bytes {span.offset}..{end} ({span.length} bytes): {span.reason}"
            )
        for first, last in self.gaps:
            out.append(f"{name}: message numbers {first}..{last} are missing")
        return out


def _existing(path: Path) -> None:
    if not path.is_file():
        raise MaintenanceError(f"there is no log file {path} (is --data-dir right?)")


def _stable_end(fd: int) -> int:
    """The file's size at a moment no writer is mid-record (flock(LOCK_SH), as readers do)."""
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        return os.fstat(fd).st_size
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _chunks(parts: list[tuple[int, int]]) -> Iterator[bytes]:
    """The files' first `end` bytes, for each (fd, end), end to end, in bounded chunks."""
    for fd, end in parts:
        offset = 0
        while offset < end:
            chunk = os.pread(fd, min(READ_CHUNK, end - offset), offset)
            if not chunk:
                break
            offset += len(chunk)
            yield chunk


def _pieces(parts: list[tuple[int, int]]) -> Iterator[Piece]:
    """Every piece (`salvage`) of the files' bytes, in order."""
    salvager = Salvager()
    for chunk in _chunks(parts):
        yield from salvager.feed(chunk)
    yield from salvager.finish()


@contextmanager
def _opened(path: Path) -> Iterator[list[tuple[int, int]]]:
    """The log's files, oldest first, each with the length to read: the sealed segments
    (`segments`) and the active file up to a record boundary. A segment sealed after the
    active file was opened is that same file and is skipped, so nothing is read twice."""
    _existing(path)
    parts: list[tuple[int, int]] = []
    active = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        inode = os.fstat(active).st_ino
        for segment, _, _ in sealed_segments(path.parent):
            fd = os.open(segment, os.O_RDONLY | os.O_CLOEXEC)
            parts.append((fd, os.fstat(fd).st_size))
            if os.fstat(fd).st_ino == inode:
                parts.pop()
                os.close(fd)
        parts.append((active, _stable_end(active)))
        yield parts
    finally:
        for fd, _ in parts:
            os.close(fd)
        if not parts or parts[-1][0] != active:
            os.close(active)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Quarantine:
    """A new, owner-only file beside the log that receives damaged bytes, in order."""

    def __init__(self, log_path: Path) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for attempt in range(1, MAX_NAME_ATTEMPTS + 1):
            suffix = "" if attempt == 1 else f"-{attempt}"
            path = log_path.with_name(f"{log_path.name}{QUARANTINE_TAG}{stamp}{suffix}")
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                self._fd = os.open(path, flags, 0o600)
            except FileExistsError:
                continue
            self.path = path
            self.size = 0
            return
        raise FileExistsError(f"no free quarantine file name beside {log_path}")

    def write(self, data: bytes) -> None:
        """Append `data`."""
        _write_all(self._fd, data)
        self.size += len(data)

    def close(self) -> None:
        """Make the file durable (its folder entry too) and close it."""
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
        fsync_folder(self.path.parent)


def write_quarantine(log_path: Path, data: bytes) -> Path:
    """Keep `data` (bytes cut off the log) in a new quarantine file; return its path."""
    quarantine = Quarantine(log_path)
    try:
        quarantine.write(data)
    finally:
        quarantine.close()
    return quarantine.path


def check_log(path: Path) -> Survey:
    """Survey the log (its sealed segments, then the active file up to a record boundary);
    safe while a server runs."""
    with _opened(path) as parts:
        survey = Survey(size=sum(end for _, end in parts))
        for piece in _pieces(parts):
            survey.take(piece)
    return survey


@dataclass(slots=True)
class Repair:
    """What `repair_log` did."""

    survey: Survey
    kept_bytes: int = 0
    quarantine: Path | None = None
    quarantined_bytes: int = 0
    markers: list[int] = field(default_factory=list)

    def lines(self, name: str) -> list[str]:
        """The report, one line each."""
        if self.survey.intact:
            return [*self.survey.lines(name), f"{name}: nothing to repair"]
        out = [*self.survey.lines(name)]
        out.append(f"{name}: kept {self.survey.records} intact messages ({self.kept_bytes} bytes)")
        if self.quarantine is not None:
            out.append(f"{name}: moved {self.quarantined_bytes} damaged bytes to {self.quarantine}")
        if self.markers:
            out.append(
                f"{name}: stored {len(self.markers)} lost-message markers in place of the"
                f" missing numbers, so no number is reused: {_ranges(self.markers)}"
            )
        return out


def _ranges(numbers: list[int]) -> str:
    parts: list[str] = []
    start = previous = numbers[0]
    for number in [*numbers[1:], None]:
        if number is not None and number == previous + 1:
            previous = number
            continue
        parts.append(str(start) if start == previous else f"{start}..{previous}")
        if number is not None:
            start = previous = number
    return ", ".join(parts)


def repair_log(path: Path, clock_ms: int | None = None) -> Repair:
    """Rewrite the log without its damage (see the module); refuse while a server holds it.

    Raises MaintenanceError if there is no log or a server (or another repair) holds it.
    """
    _existing(path)
    if sealed_segments(path.parent):
        raise MaintenanceError(
            "log repair handles a log without sealed segments (no retention) only; "
            "`log backup` copies a segmented log into one file that repair can work on"
        )
    now_ms = time.time_ns() // 1_000_000 if clock_ms is None else clock_ms
    lock_fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        try:
            try_lock(lock_fd, path)
        except LogInUse as exc:
            raise MaintenanceError(f"{exc}: stop the server first") from None
        return _rewrite(path, lock_fd, now_ms)
    finally:
        os.close(lock_fd)


def _rewrite(path: Path, fd: int, now_ms: int) -> Repair:
    survey = check_log(path)
    if survey.intact:
        return Repair(survey, kept_bytes=survey.size)  # every byte kept, nothing rewritten
    repair = Repair(survey)
    temp = path.with_name(path.name + ".repair-tmp")
    out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    quarantine: Quarantine | None = None
    trailing = 0  # complete damaged lines since the last intact record
    last: int | None = None  # no markers before the first intact record
    last_time = now_ms
    try:
        for piece in _pieces([(fd, survey.size)]):
            if isinstance(piece, Damaged):
                quarantine = quarantine or Quarantine(path)
                quarantine.write(piece.data)
                trailing += lost_count(piece.data)
                continue
            where = str(quarantine.path) if quarantine else "nowhere: they were missing"
            for seq in range(piece.record.seq if last is None else last + 1, piece.record.seq):
                _write_all(out, encode_record(lost_record(seq, piece.record.time_ms, where)))
                repair.markers.append(seq)
            _write_all(out, piece.data)
            repair.kept_bytes += len(piece.data)
            last, last_time, trailing = piece.record.seq, piece.record.time_ms, 0
        if trailing:
            assert quarantine is not None
            after = last or 0
            for seq in range(after + 1, after + 1 + trailing):
                marker = lost_record(seq, max(now_ms, last_time), str(quarantine.path))
                _write_all(out, encode_record(marker))
                repair.markers.append(seq)
        os.fsync(out)
    finally:
        os.close(out)
        if quarantine is not None:
            quarantine.close()
            repair.quarantine, repair.quarantined_bytes = quarantine.path, quarantine.size
    os.replace(temp, path)
    fsync_folder(path.parent)
    return repair


@dataclass(frozen=True, slots=True)
class Backup:
    """What `backup_log` copied."""

    destination: Path
    survey: Survey
    left_out: int  # bytes of a torn last record not copied

    def lines(self) -> list[str]:
        """The report."""
        survey = self.survey
        numbers = f" ({survey.first}..{survey.last})" if survey.first is not None else ""
        out = [
            f"backed up {survey.records} messages{numbers}, {survey.size} bytes, to"
            f" {self.destination} (verified)"
        ]
        if self.left_out:
            out.append(f"left out {self.left_out} bytes of a torn record at the end of the log")
        return out


def backup_log(path: Path, destination: Path) -> Backup:
    """Copy the log to `destination` up to a record boundary and verify the copy.

    Raises MaintenanceError if `destination` exists or there is no log, BackupFailed if the
    log is damaged (the copy is removed).
    """
    _existing(path)
    if destination.exists():
        raise MaintenanceError(f"{destination} exists; give a new file name")
    if not destination.parent.is_dir():
        raise MaintenanceError(f"there is no folder {destination.parent}")
    temp = destination.with_name(destination.name + ".partial")
    with _opened(path) as parts:
        out = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            copied = 0
            for chunk in _chunks(parts):
                _write_all(out, chunk)
                copied += len(chunk)
            survey, left_out = _verify_copy(out, copied)
            os.fsync(out)
        except BaseException:
            os.close(out)
            temp.unlink(missing_ok=True)
            raise
        os.close(out)
        os.replace(temp, destination)
        fsync_folder(destination.parent)
    return Backup(destination, survey, left_out)


def _verify_copy(fd: int, size: int) -> tuple[Survey, int]:
    """Read the copy back: every record intact and numbered densely, except a torn end, which
    is cut off the copy. Returns the survey and the bytes cut."""
    survey = Survey()
    left_out = 0
    for piece in _pieces([(fd, size)]):
        torn = isinstance(piece, Damaged) and not piece.data.endswith(b"\n")
        if torn and piece.offset + len(piece.data) == size:
            os.ftruncate(fd, piece.offset)
            left_out = len(piece.data)
            break
        survey.take(piece)
        if not survey.intact:
            problem = survey.lines("the log")[-1]
            raise BackupFailed(f"{problem}; run `papaya-trio log check`, then `log repair`")
    survey.size = size - left_out
    return survey, left_out
