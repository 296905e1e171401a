"""The log file as the fork-mode processes share it: each opens it itself; flock orders them.

Theory of operation
-------------------
Every process (the parent, each RECV, each SEND) opens ``chat.log`` with its own ``os.open``,
so each has its own open file description and ``flock`` really excludes. (The original opened
the file once before forking: every process shared one description, so its locks excluded
nobody and all of them moved one shared offset.) The bytes are trio mode's record format
(`papaya_trio.records`), so either mode serves what the other wrote.

- A writer (RECV) holds ``LOCK_EX`` from reading the tail to the end of its write. It
  computes the next sequence number from the file under that lock, because another RECV may
  have appended since it last looked.
- A reader (SEND, the parent) holds ``LOCK_SH`` only while it reads one bounded chunk, and
  consumes complete lines only. Under ``LOCK_SH`` no write is in progress, so bytes after the
  last newline at the end of the file are a torn record left by a writer that died; the next
  writer cuts them off under ``LOCK_EX``.

Group commit (``fsync = "always"``), as trio mode has it: a record is acknowledged, and shown
to anybody, only once an fsync that began after it was written has finished, and concurrent
writers share fsyncs. `DurableEnd` is one number shared by every process of the server (an
anonymous shared mapping the parent makes before its first fork): the byte offset up to which
the log is known to be on disk. After its write, with ``LOCK_EX`` released so that others can
append meanwhile, a writer:

1. returns at once if the durable end already covers its record;
2. otherwise takes the *sync lock* (``flock(LOCK_EX)`` on the data folder itself, which each
   RECV opens: its own open file description), and looks again: a writer that held the lock
   meanwhile may have covered it;
3. otherwise, still holding it, reads the end of the last complete record (under ``LOCK_SH``,
   so no write is half done), fsyncs, raises the durable end to that offset and lets go.

Why it is right: fsync makes every byte of the file written before it began durable, whoever
wrote it, and step 3 only claims bytes that were complete before its fsync began. Only the
sync lock's holder raises the durable end (an aligned 8-byte store), and it never goes down: a
torn tail is cut at the end of the last complete record, which is at or past it. Readers never
read past it (the parent's index before a fork, the welcome's head, SEND), so nobody is shown a
record that a power cut could still take away. Why it shares: while one writer fsyncs, the
others append and queue on the sync lock; the next holder's fsync covers all of them, and each
of them finds itself covered in step 2. A writer killed while holding either lock releases it
with its last descriptor (flock), so nobody waits for a dead process; its record, if complete,
becomes durable and visible with the next writer's fsync. With ``interval`` or ``never`` records
are visible as soon as they are written, as in trio mode.

Each process keeps a `LogIndex`: the newest sequence number and where it ends, a sparse offset
index (for history and ``since``), and the resend table. The parent brings its index up to date
before every fork, so a child only reads what was appended since it was forked.

Resend dedupe has trio mode's bound: the newest DEDUPE_ENTRIES (user, id) pairs in log order.
Every writer reads every record appended by others under its ``LOCK_EX`` before deciding, so
a resend is recognised whichever process stored the original, as long as fewer than
DEDUPE_ENTRIES records with ids were stored after it.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import mmap
import os
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio

from papaya_trio.chatlog import (
    DEDUPE_ENTRIES,
    INDEX_STRIDE,
    READ_CHUNK,
    AppendResult,
    ChatLog,
    FsyncPolicy,
    Recovery,
    StorageFailed,
)
from papaya_trio.logmaint import write_quarantine
from papaya_trio.protocol.native import history_span
from papaya_trio.records import Record, RecordScanner, ScannedRecord, encode_record
from papaya_trio.segments import sealed_segments
from papaya_trio.service import ServiceError, wall_clock_ms
from papaya_trio.storage import FileStorage

logger = logging.getLogger(__name__)

MAX_CHUNK = 64 * 1024 * 1024  # no record is this long; a line without end beyond it is damage


class LogDamaged(StorageFailed):
    """A complete line in the log is not the record that should be there."""


class LogFile:
    """One process's own open file description of the shared log."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def locked(self, operation: int) -> _Flock:
        """Hold `flock(operation)` (LOCK_SH or LOCK_EX) for the `with` block."""
        return _Flock(self.fd, operation)

    def size(self) -> int:
        """The file's current length."""
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        """Release the descriptor (and any lock held through it)."""
        os.close(self.fd)


class _Flock:
    """`LogFile.locked`: a plain object rather than a generator, as SEND takes it per wake-up."""

    __slots__ = ("_fd", "_operation")

    def __init__(self, fd: int, operation: int) -> None:
        self._fd = fd
        self._operation = operation

    def __enter__(self) -> None:
        fcntl.flock(self._fd, self._operation)

    def __exit__(self, *exc_info: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)


class LogReader:
    """Complete records from `offset` on, one bounded chunk per call; the caller holds a lock."""

    def __init__(self, log: LogFile, offset: int = 0, after_seq: int = 0) -> None:
        self._log = log
        self._scanner = RecordScanner(offset, after_seq)
        self.at_end = False  # the last read reached the end of the file or the limit

    @property
    def offset(self) -> int:
        """Where the next unread record starts."""
        return self._scanner.offset

    @property
    def last_seq(self) -> int:
        """The sequence number of the last record read."""
        return self._scanner.last_seq

    def read_chunk(self, limit: int | None = None) -> list[ScannedRecord]:
        """The complete records in the next chunk, none past byte `limit` (a record boundary,
        see `DurableEnd`); [] at the end of the file or at the limit.

        Raises LogDamaged if a line is not the next record. Bytes after the last newline at the
        end of the file (a torn record) are left unread. Afterwards `at_end` says whether this
        read reached the end of the file or the limit: if so, under the caller's lock there was
        nothing more to read, and a further call could only find records appended since.
        """
        room = None if limit is None else limit - self.offset
        self.at_end = True
        if room is not None and room <= 0:
            return []
        size = READ_CHUNK if room is None else min(READ_CHUNK, room)
        while True:
            data = os.pread(self._log.fd, size, self.offset)
            self.at_end = len(data) < size or size == room
            end = data.rfind(b"\n")
            if end != -1:
                break
            if self.at_end:
                return []
            if size >= MAX_CHUNK:
                raise LogDamaged(f"log line at byte {self.offset} is longer than {MAX_CHUNK}")
            size *= 2  # a record longer than a chunk (written with a larger max_message_bytes)
            size = size if room is None else min(size, room)
        found = self._scanner.feed(data[: end + 1])
        if self._scanner.problem is not None:
            raise LogDamaged(
                f"log record at byte {self._scanner.bad_offset} is damaged: {self._scanner.problem}"
            )
        return found


def count_lines(log: LogFile, offset: int, limit: int | None, chunks: int) -> tuple[int, int]:
    """How many complete lines follow byte `offset`, and where the last of them ends: at most
    `chunks` chunks read, each under LOCK_SH, none past byte `limit`.

    Every record is one line (its JSON holds no raw newline), so this counts records without
    decoding them: how far a reader is behind, not what it will read (a damaged line counts
    too; the reader finds it). A line longer than a chunk ends the count (a lower bound).
    """
    lines = 0
    for _ in range(chunks):
        size = READ_CHUNK if limit is None else min(READ_CHUNK, limit - offset)
        if size <= 0:
            break
        with log.locked(fcntl.LOCK_SH):
            data = os.pread(log.fd, size, offset)
        end = data.rfind(b"\n") + 1
        lines += data.count(b"\n", 0, end)
        offset += end
        if len(data) < size or end == 0:
            break
    return lines, offset


class LogIndex:
    """What one process knows about the log: head, end, sparse offsets, recent client ids."""

    def __init__(self, dedupe_entries: int = DEDUPE_ENTRIES) -> None:
        self.head = 0
        self.end = 0
        self._offsets: list[int] = []  # offset of record 1 + i * INDEX_STRIDE
        self._dedupe: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._dedupe_entries = dedupe_entries

    def __repr__(self) -> str:
        return f"<LogIndex head={self.head} end={self.end} ids={len(self._dedupe)}>"

    def add(self, record: Record, end_offset: int) -> None:
        """Take note of the record that follows the known end and ends at `end_offset`."""
        if (record.seq - 1) % INDEX_STRIDE == 0:
            self._offsets.append(self.end)
        self.head, self.end = record.seq, end_offset
        if record.client_id is not None:
            self._dedupe[(record.user, record.client_id)] = record.seq
            if len(self._dedupe) > self._dedupe_entries:
                self._dedupe.popitem(last=False)

    def catch_up(self, log: LogFile, limit: int | None = None) -> None:
        """Read every complete record after the known end, up to byte `limit` if given (the
        caller holds a lock)."""
        reader = LogReader(log, self.end, self.head)
        while scanned := reader.read_chunk(limit):
            for item in scanned:
                self.add(item.record, item.end_offset)

    def original(self, user: str, client_id: str) -> int | None:
        """The sequence number under which `user` already stored `client_id`, if remembered."""
        return self._dedupe.get((user, client_id))

    def reader_for(self, log: LogFile, seq: int) -> LogReader:
        """A reader positioned at or before record `seq` (records before it must be skipped)."""
        block = min((max(seq, 1) - 1) // INDEX_STRIDE, len(self._offsets) - 1)
        if block < 0:
            return LogReader(log)
        return LogReader(log, self._offsets[block], block * INDEX_STRIDE)


def read_records(log: LogFile, index: LogIndex, first: int, last: int) -> list[Record]:
    """Records `first` to `last` (known to be in the file), each chunk read under LOCK_SH."""
    reader = index.reader_for(log, first)
    found: list[Record] = []
    while reader.last_seq < last:
        with log.locked(fcntl.LOCK_SH):
            scanned = reader.read_chunk()
        if not scanned:
            break
        found += [s.record for s in scanned if first <= s.record.seq <= last]
    return found


def read_history(
    log: LogFile, index: LogIndex, durable: DurableEnd, before: int, limit: int
) -> tuple[list[Record], int]:
    """A history page (see `protocol.native.history_span`) and the oldest sequence number."""
    with log.locked(fcntl.LOCK_SH):
        index.catch_up(log, durable.limit())
    span = history_span(before, limit, index.head)
    records = read_records(log, index, span.start, span.stop - 1) if span else []
    return records, 1 if index.head else 0


class DurableEnd:
    """How far the log is known to be on disk, shared by every process of one server.

    Made by the parent before it forks (an anonymous shared mapping, so every child reads and
    writes the same memory). See the module's group commit for who may raise it and why.
    """

    def __init__(self, fsync: FsyncPolicy, end: int) -> None:
        self.enforced = fsync is FsyncPolicy.ALWAYS
        self._map = mmap.mmap(-1, ctypes.sizeof(ctypes.c_int64))
        self._end = ctypes.c_int64.from_buffer(self._map)
        self._end.value = end

    def __repr__(self) -> str:
        return f"<DurableEnd {self._end.value} enforced={self.enforced}>"

    def limit(self) -> int | None:
        """The byte readers may read up to: the durable end with ``always``, else no limit."""
        return self._end.value if self.enforced else None

    def covers(self, end: int) -> bool:
        """Whether every byte before `end` is known to be on disk."""
        return self._end.value >= end

    def publish(self, end: int) -> None:
        """Everything before `end` is on disk (only the sync lock's holder calls this)."""
        self._end.value = max(self._end.value, end)


class LogWriter:
    """RECV's appends: one record at a time under LOCK_EX, deduped; with ``always``, returns
    once a shared fsync covers the record (group commit, see the module)."""

    def __init__(
        self, log: LogFile, index: LogIndex, durable: DurableEnd, clock_ms: Callable[[], int]
    ) -> None:
        self._log = log
        self._index = index
        self._durable = durable
        self._clock_ms = clock_ms
        self._sync_lock: int | None = None
        if durable.enforced:  # the sync lock: flock on the data folder, our own description
            self._sync_lock = os.open(log.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.broken: str | None = None

    def append(
        self,
        user: str,
        text: str,
        client_id: str | None = None,
        *,
        action: bool = False,
        dialect: str | None = None,
        verified: bool = False,
    ) -> AppendResult:
        """Store one message (or recognise a resend) and return its sequence number.

        Raises StorageFailed if it could not be stored; after a failed fsync this writer refuses
        every further append, as trio mode's log does.
        """
        if self.broken is not None:
            raise StorageFailed(f"the log is read-only after an error: {self.broken}")
        with self._log.locked(fcntl.LOCK_EX):
            self._index.catch_up(self._log)
            self._cut_torn_tail()
            if client_id is not None and (seq := self._index.original(user, client_id)):
                result = AppendResult(seq, duplicate=True)
            else:
                record = Record(
                    self._index.head + 1,
                    self._clock_ms(),
                    user,
                    text,
                    client_id,
                    action=action,
                    dialect=dialect,
                    verified=verified,
                )
                data = encode_record(record)
                self._write(data)
                self._index.add(record, self._index.end + len(data))
                result = AppendResult(record.seq)
            written = self._index.end  # a resend's original may not be durable yet either
        if self._sync_lock is not None:
            self._wait_durable(written)
        return result

    def close(self) -> None:
        """Release the sync lock's descriptor (the log's is the caller's)."""
        if self._sync_lock is not None:
            os.close(self._sync_lock)

    def _wait_durable(self, end: int) -> None:
        """Return once the log is on disk up to `end`, sharing fsyncs (see the module)."""
        assert self._sync_lock is not None
        if self._durable.covers(end):
            return
        fcntl.flock(self._sync_lock, fcntl.LOCK_EX)
        try:
            if self._durable.covers(end):
                return  # the previous holder's fsync began after our write: it covered us
            with self._log.locked(fcntl.LOCK_SH):
                self._index.catch_up(self._log)
            complete = self._index.end
            self._sync()
            self._durable.publish(complete)
        finally:
            fcntl.flock(self._sync_lock, fcntl.LOCK_UN)

    def _cut_torn_tail(self) -> None:
        # Under LOCK_EX nobody is writing: bytes after the last record are a dead writer's.
        size = self._log.size()
        if size > self._index.end:
            torn = os.pread(self._log.fd, size - self._index.end, self._index.end)
            where = write_quarantine(self._log.path, torn)
            os.ftruncate(self._log.fd, self._index.end)
            logger.warning(
                "log: cut %d bytes of a torn record after record %d; the bytes are in %s",
                size - self._index.end,
                self._index.head,
                where,
            )

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._log.fd, view) :]
        except OSError as exc:
            logger.error("log write failed: %s", exc)
            try:
                os.ftruncate(self._log.fd, self._index.end)
            except OSError as undo_exc:
                self.broken = f"could not undo a failed write: {undo_exc}"
            raise StorageFailed(f"could not write the log: {exc.strerror or exc}") from exc

    def _sync(self) -> None:
        try:
            os.fsync(self._log.fd)
        except OSError as exc:
            self.broken = f"fsync failed: {exc}"
            logger.critical("log refuses appends in this session: %s", self.broken)
            raise StorageFailed(f"could not sync the log: {exc.strerror or exc}") from exc


class _InlineSyncStorage(FileStorage):
    """FileStorage whose fsync runs inline: recovery happens before any child is forked, and
    forking while one of trio's worker threads exists would copy a process in mid-thread."""

    async def sync(self) -> None:
        os.fsync(self._fd)


def recover_log(path: Path, fsync: FsyncPolicy) -> Recovery:
    """Trio mode's recovery, run once before anything is forked: quarantine and cut a damaged
    tail (with lost-message markers for damaged complete records), refuse a damaged middle
    (raises LogCorrupted), log what was done."""

    if sealed_segments(path.parent):
        raise ServiceError(
            f"{path.parent} holds a segmented log (retention, trio mode): fork mode reads a"
            " single-file log only; serve it in trio mode, or `log backup` it into one file"
        )

    async def scan() -> Recovery:
        log, recovery = await ChatLog.open(
            _InlineSyncStorage(path),
            clock_ms=wall_clock_ms,
            fsync=fsync,
            quarantine=partial(write_quarantine, path),
        )
        await log.aclose()
        if log.first > 1:
            raise ServiceError(
                f"{path} starts at message {log.first} (retention dropped older ones): fork"
                " mode reads a log that starts at 1 only; serve it in trio mode"
            )
        return recovery

    return trio.run(scan)


def open_index(log: LogFile) -> LogIndex:
    """Scan the whole (recovered) log into a fresh index."""
    index = LogIndex()
    with log.locked(fcntl.LOCK_SH):
        index.catch_up(log)
    return index
