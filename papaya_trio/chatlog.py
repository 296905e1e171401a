"""The file store: the room's log in one append-only file (see `logstore` for its promises).

Theory of operation
-------------------
Appends are serialised by a `trio.Lock` (and, inside the storage, by `flock`). Each append
writes one self-delimiting record (see `records`), then the record becomes *visible*: readers
(`read_after`) never see past the visible head, and `on_visible` (the broadcaster) is told each
time it moves. With `fsync = "always"` a record becomes visible, and its append returns (so its
sender is confirmed), only once it is on disk; concurrent appenders share fsyncs (group commit:
whoever finds no sync running starts one covering everything written so far, the others wait
for it). With `"interval"` and `"never"` records are visible as soon as they are written.

Readers ask for the records after their own cursor. Recent records are served from a bounded
in-memory cache; older ones are read from storage through a sparse offset index (one entry
every INDEX_STRIDE records), in bounded batches, so replaying a long history never loads the
whole log.

On open the whole log is scanned. A damaged tail (a torn record, or a complete record whose
checksum fails) is moved to a quarantine file and cut off; each damaged complete record gets a
lost-message marker in its place. Damage followed by intact records stops the start instead
(see `open`).

A failed write is cut back off the storage and reported as StorageFailed; the message is not
stored and the log stays usable. A failed fsync leaves the disk's state unknown, so the log
refuses further appends (reads keep working) until the server is restarted.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Required, TypedDict, Unpack

import trio

from papaya_trio.logstore import AppendResult as AppendResult
from papaya_trio.logstore import FsyncPolicy as FsyncPolicy
from papaya_trio.logstore import StorageFailed as StorageFailed
from papaya_trio.records import CorruptRecord, Record, RecordScanner, decode_record, encode_record
from papaya_trio.salvage import Intact, Salvager, lost_count, lost_record
from papaya_trio.segments import SegmentedFileStorage
from papaya_trio.storage import Storage

logger = logging.getLogger(__name__)

INDEX_STRIDE = 128
READ_CHUNK = 64 * 1024
RETENTION_CHECK = 60.0  # seconds between retention's trims when no append triggers one
DAY_MS = 86_400_000
DEDUPE_ENTRIES = 65536  # client ids remembered for resend detection (fork mode uses it too)


class LogCorrupted(Exception):
    """The log is damaged before its tail; truncating would destroy good records."""


class LogOptions(TypedDict, total=False):
    """ChatLog's keyword options, for `ChatLog.open`."""

    clock_ms: Required[Callable[[], int]]
    fsync: FsyncPolicy
    sync_interval: float
    cache_records: int
    dedupe_entries: int
    quarantine: Callable[[bytes], object] | None
    retention: Retention | None
    segments: SegmentedFileStorage | None


@dataclass(frozen=True, slots=True)
class Retention:
    """How much history to keep (0: no bound), and how big a segment grows before sealing."""

    days: float = 0.0
    bytes: int = 0
    segment_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Recovery:
    """What opening the log found and repaired."""

    records: int  # intact records found (lost-message markers not included)
    truncated_bytes: int  # damaged bytes cut off the end (and quarantined)
    problem: str | None
    lost: int = 0  # lost-message markers stored in place of damaged complete records


class ChatLog:
    """The append-only log of one room. Create it with `await ChatLog.open(...)`."""

    def __init__(
        self,
        storage: Storage,
        *,
        clock_ms: Callable[[], int],
        fsync: FsyncPolicy = FsyncPolicy.ALWAYS,
        sync_interval: float = 1.0,
        cache_records: int = 4096,
        dedupe_entries: int = DEDUPE_ENTRIES,
        quarantine: Callable[[bytes], object] | None = None,
        retention: Retention | None = None,
        segments: SegmentedFileStorage | None = None,
    ) -> None:
        self._storage = storage
        self._clock_ms = clock_ms
        self.fsync = fsync
        self.sync_interval = sync_interval
        self._cache_records = cache_records
        self._dedupe_entries = dedupe_entries
        self._quarantine = quarantine  # keeps a cut tail's bytes; returns where (a path)
        self._retention = retention
        # The segments behind `storage` (which may wrap them, as the metrics do).
        if segments is None and isinstance(storage, SegmentedFileStorage):
            segments = storage
        self._segments = segments
        if retention is not None and self._segments is None:
            raise TypeError("retention needs a SegmentedFileStorage")
        self._lock = trio.Lock()
        self._size = 0
        self._written = 0  # newest record in storage
        self._synced = 0  # newest record known durable
        self._visible = 0  # newest record readers may see
        self._offsets: dict[int, int] = {}  # block i: offset of record 1 + i * INDEX_STRIDE
        self._first = 1  # oldest kept record (above 1 once retention dropped segments)
        self._first_offset = 0  # where it starts
        self._active_first: int | None = None  # oldest record in the active segment
        self._cache: list[Record] = []  # consecutive recent records, newest last
        self._dedupe: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._syncing = False
        self._sync_done = trio.Event()
        self._broken: str | None = None
        self.on_visible: Callable[[int], None] = lambda head: None

    @classmethod
    async def open(
        cls, storage: Storage, **options: Unpack[LogOptions]
    ) -> tuple[ChatLog, Recovery]:
        """Scan the stored log, cut off a torn or corrupt tail, and return the ready log.

        The cut bytes go to `quarantine` (which returns where it kept them); a damaged complete
        record at the end is replaced by a lost-message marker (`salvage.lost_record`), so its
        number, which may have been acknowledged, is never reused. Raises LogCorrupted if a bad
        record is followed by good ones (a damaged middle is never truncated away: `papaya-trio
        log repair` handles it).
        """
        log = cls(storage, **options)
        recovery = await log._scan()
        return log, recovery

    # --- state ------------------------------------------------------------------------------
    @property
    def head(self) -> int:
        """Sequence number of the newest visible record (0 for an empty log)."""
        return self._visible

    @property
    def first(self) -> int:
        """Sequence number of the oldest record kept (0 for an empty log; retention drops
        older ones)."""
        return self._first if self._visible else 0

    @property
    def broken(self) -> str | None:
        """Why the log refuses appends, or None while it accepts them."""
        return self._broken

    def __repr__(self) -> str:
        return f"<ChatLog head={self._visible} written={self._written} fsync={self.fsync}>"

    # --- writing ----------------------------------------------------------------------------
    async def append(
        self,
        user: str,
        text: str,
        client_id: str | None = None,
        *,
        action: bool = False,
        dialect: str | None = None,
        verified: bool = False,
    ) -> AppendResult:
        """Store one message and return its sequence number once it is visible.

        A resend (same user and client id as a stored record) is not stored again; its
        original sequence number is returned with `duplicate=True`.
        """
        async with self._lock:
            self._check_usable()
            key = (user, client_id) if client_id is not None else None
            if key is not None and (seq := self._dedupe.get(key)) is not None:
                result = AppendResult(seq, duplicate=True)
            else:
                await self._seal_if_full()
                record = Record(
                    self._written + 1,
                    self._clock_ms(),
                    user,
                    text,
                    client_id,
                    action=action,
                    dialect=dialect,
                    verified=verified,
                )
                await self._write(encode_record(record))
                self._remember(record, self._size)
                result = AppendResult(record.seq)
                await self._trim()
                if self.fsync is not FsyncPolicy.ALWAYS:
                    self._make_visible(record.seq)
        if self.fsync is FsyncPolicy.ALWAYS:
            await self._wait_durable(result.seq)
        return result

    async def restore(self, records: Sequence[Record]) -> None:
        """Append `records` as they are (log import); each must follow the head by one."""
        async with self._lock:
            self._check_usable()
            for record in records:
                if record.seq != self._written + 1:
                    raise StorageFailed(
                        f"record {record.seq} does not follow the log's last, {self._written}"
                    )
                await self._write(encode_record(record))
                self._remember(record, self._size)
        await self.sync()

    async def _write(self, data: bytes) -> None:
        try:
            await self._storage.append(data)
        except OSError as exc:
            logger.error("log write failed: %s", exc)
            try:
                await self._storage.truncate(self._size)
            except OSError as undo_exc:
                self._fail(f"could not undo a failed write: {undo_exc}")
            raise StorageFailed(f"could not write the log: {exc.strerror or exc}") from exc
        self._size += len(data)

    async def sync(self) -> None:
        """Make every written record durable (and visible)."""
        await self._wait_durable(self._written)

    async def _wait_durable(self, seq: int) -> None:
        while self._synced < seq:
            self._check_usable()
            if self._syncing:
                await self._sync_done.wait()
                continue
            self._syncing = True
            target = self._written
            try:
                await self._storage.sync()
            except OSError as exc:
                self._fail(f"fsync failed: {exc}")
                raise StorageFailed(f"could not sync the log: {exc.strerror or exc}") from exc
            finally:
                self._syncing = False
                done, self._sync_done = self._sync_done, trio.Event()
                done.set()
            self._synced = max(self._synced, target)
            self._make_visible(target)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The background work: the interval sync with `fsync = "interval"`, and retention's
        trim every RETENTION_CHECK seconds (a quiet room's old segments age out too)."""
        async with trio.open_nursery() as nursery:
            if self.fsync is FsyncPolicy.INTERVAL:
                await nursery.start(self.run_interval_sync, self.sync_interval)
            if self._retention is not None:
                nursery.start_soon(self._run_retention)
            task_status.started()
            await trio.sleep_forever()

    async def _run_retention(self) -> None:
        while True:
            await trio.sleep(RETENTION_CHECK)
            async with self._lock:
                try:
                    await self._trim()
                except StorageFailed as exc:
                    logger.error("retention: %s", exc)

    # --- retention (see `segments`) ---------------------------------------------------------
    async def _seal_if_full(self) -> None:
        """Start a new segment before a record that would go to a full one."""
        segments, retention = self._segments, self._retention
        if segments is None or retention is None or self._active_first is None:
            return
        if self._size - segments.active_base < retention.segment_bytes:
            return
        try:
            await segments.seal(self._active_first, self._cache[-1].time_ms)
        except OSError as exc:
            raise StorageFailed(f"could not start a new log segment: {exc}") from exc
        self._active_first = None

    async def _trim(self) -> None:
        """Drop sealed segments that are too old or over the size bound, oldest first.

        The active segment is never dropped, nor the newest sealed one while the active is
        empty: the newest record always survives, and with it the next number.
        """
        segments, retention = self._segments, self._retention
        if segments is None or retention is None:
            return
        now = self._clock_ms()
        while segments.sealed and (self._active_first is not None or len(segments.sealed) > 1):
            oldest = segments.sealed[0]
            too_old = retention.days > 0 and oldest.last_time_ms < now - retention.days * DAY_MS
            too_big = 0 < retention.bytes < self._size - oldest.base
            if not (too_old or too_big):
                return
            try:
                segments.drop_oldest()
            except OSError as exc:
                raise StorageFailed(f"could not delete an old log segment: {exc}") from exc
            self._forget_before(segments.start_offset, oldest.base + oldest.size)
            logger.info(
                "retention: dropped %s (messages %d..%d); the log now starts at %d",
                oldest.path.name,
                oldest.first,
                self._first - 1,
                self._first,
            )

    def _forget_before(self, offset: int, segment_end: int) -> None:
        """The records before byte `offset` are gone: move the start, drop their index."""
        following = [s.first for s in self._segments.sealed] if self._segments else []
        self._first = following[0] if following else (self._active_first or self._written + 1)
        self._first_offset = offset
        for block in [b for b, at in self._offsets.items() if at < segment_end]:
            del self._offsets[block]

    async def run_interval_sync(
        self, interval: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """For `fsync = "interval"`: sync every `interval` seconds while there is news."""
        task_status.started()
        while True:
            await trio.sleep(interval)
            if self._synced < self._written and self._broken is None:
                try:
                    await self.sync()
                except StorageFailed:
                    logger.critical("log is read-only from now on: %s", self._broken)

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise StorageFailed(f"the log is read-only after an error: {self._broken}")

    def _fail(self, why: str) -> None:
        if self._broken is None:
            logger.critical("log refuses appends until restart: %s", why)
            self._broken = why

    def _make_visible(self, seq: int) -> None:
        if seq > self._visible:
            self._visible = seq
            self.on_visible(seq)

    def _remember(self, record: Record, end_offset: int) -> None:
        """Index, cache and dedupe-track a record now in storage ending at `end_offset`."""
        self._written = record.seq
        segments = self._segments
        if self._active_first is None and segments and end_offset > segments.active_base:
            self._active_first = record.seq
        if (record.seq - 1) % INDEX_STRIDE == 0:
            line_length = len(encode_record(record))
            self._offsets[(record.seq - 1) // INDEX_STRIDE] = end_offset - line_length
        self._cache.append(record)
        if len(self._cache) >= 2 * self._cache_records:
            del self._cache[: len(self._cache) - self._cache_records]
        if record.client_id is not None:
            self._dedupe[(record.user, record.client_id)] = record.seq
            if len(self._dedupe) > self._dedupe_entries:
                self._dedupe.popitem(last=False)

    # --- reading ----------------------------------------------------------------------------
    async def read_after(self, cursor: int, limit: int) -> list[Record]:
        """Up to `limit` visible records with sequence numbers above `cursor`, oldest first
        (from `first` on if `cursor` is older)."""
        cursor = max(cursor, self._first - 1)
        last = min(self._visible, cursor + limit)
        if last <= cursor:
            return []
        first = cursor + 1
        if self._cache and self._cache[0].seq <= first:
            base = self._cache[0].seq
            return self._cache[first - base : last - base + 1]
        return await self._read_stored(first, last)

    async def _read_stored(self, first: int, last: int) -> list[Record]:
        block = (first - 1) // INDEX_STRIDE
        if block in self._offsets:
            offset, after_seq = self._offsets[block], block * INDEX_STRIDE
        else:  # the oldest kept block starts inside the index's block
            offset, after_seq = self._first_offset, self._first - 1
        scanner = RecordScanner(offset, after_seq=after_seq)
        found: list[Record] = []
        while offset < self._size:
            chunk = await self._storage.read(offset, min(READ_CHUNK, self._size - offset))
            if not chunk:
                break
            offset += len(chunk)
            for scanned in scanner.feed(chunk):
                seq = scanned.record.seq
                if seq >= first:
                    found.append(scanned.record)
                if seq >= last:
                    return found
            if scanner.problem is not None:
                raise StorageFailed(f"log changed under the server: {scanner.problem}")
        return found

    async def catch_up(self, seq: int) -> None:
        """Nothing to do: no other server writes this file, so the head is already the newest."""
        await trio.lowlevel.checkpoint()

    def recent(self, count: int) -> list[Record]:
        """The newest `count` visible records (at most the cache size), oldest first."""
        end = self._visible - (self._cache[0].seq if self._cache else 0) + 1
        return self._cache[max(0, end - count) : max(0, end)]

    # --- opening and closing ----------------------------------------------------------------
    async def _scan(self) -> Recovery:
        total = await self._storage.size()
        offset = self._segments.start_offset if self._segments is not None else 0
        self._first_offset = offset
        scanner = RecordScanner(offset)
        while offset < total and scanner.problem is None:
            chunk = await self._storage.read(offset, min(READ_CHUNK, total - offset))
            if not chunk:
                break
            if offset == self._first_offset:
                self._first = self._first_seq(chunk)
                scanner = RecordScanner(offset, after_seq=self._first - 1)
            offset += len(chunk)
            for scanned in scanner.feed(chunk):
                self._remember(scanned.record, scanned.end_offset)
        good_end = scanner.offset
        problem = scanner.problem
        if problem is None and scanner.pending:
            problem = f"torn record ({scanner.pending} bytes without a line end)"
        self._size = good_end
        lost = 0
        if good_end < total:
            problem = problem or f"{total - good_end} bytes could not be read"
            await self._refuse_if_damaged_middle(good_end, total, scanner.last_seq, problem)
            lost = await self._cut_tail(good_end, total, problem)
        elif total:
            await self._sync_found()
        self._synced = self._visible = self._written
        return Recovery(scanner.last_seq, total - good_end, problem, lost)

    async def _sync_found(self) -> None:
        """Sync what the scan found before showing any of it: a process before this one may
        have written records it never synced (its fsync failed, or it was stopped without its
        final sync), and a record this start shows must survive a power cut like any other."""
        try:
            await self._storage.sync()
        except OSError as exc:
            raise StorageFailed(f"could not sync the log it found: {exc.strerror or exc}") from exc

    def _first_seq(self, first_chunk: bytes) -> int:
        """The number of the oldest record: 1 for a whole log, more once retention has dropped
        older segments (from the oldest segment's name, else from the log's first record)."""
        if self._segments is not None and self._segments.sealed:
            return self._segments.sealed[0].first
        try:
            return decode_record(first_chunk.split(b"\n")[0]).seq
        except CorruptRecord:
            return 1  # damaged: the scan that follows says what it found

    async def _refuse_if_damaged_middle(
        self, bad_offset: int, total: int, last_seq: int, problem: str
    ) -> None:
        """Raise LogCorrupted if any intact record follows the bad bytes (see `salvage`)."""
        salvager = Salvager(bad_offset, last_seq)
        offset = bad_offset
        while offset < total:
            chunk = await self._storage.read(offset, min(READ_CHUNK, total - offset))
            if not chunk:
                break
            offset += len(chunk)
            if any(isinstance(piece, Intact) for piece in salvager.feed(chunk)):
                raise LogCorrupted(
                    f"log record at byte {bad_offset} is damaged ({problem}) and intact "
                    "records follow it; refusing to start: stop here and run `papaya-trio "
                    "log repair` (it keeps every intact record and quarantines the damage)"
                )

    async def _cut_tail(self, good_end: int, total: int, problem: str) -> int:
        """Keep the damaged tail's bytes in quarantine, cut them off, and store a lost-message
        marker for each complete line they held (numbers that may have been acknowledged are
        never given to new messages). Returns how many markers were stored."""
        cut = await self._storage.read(good_end, total - good_end)
        where = "the server's log of this start (no quarantine file)"
        if self._quarantine is not None:
            try:
                where = str(self._quarantine(cut))
            except OSError as exc:
                raise StorageFailed(f"could not quarantine the damaged tail: {exc}") from exc
        try:
            await self._storage.truncate(good_end)
            lost = lost_count(cut)
            for seq in range(self._written + 1, self._written + 1 + lost):
                record = lost_record(seq, self._clock_ms(), where)
                await self._storage.append(encode_record(record))
                self._size += len(encode_record(record))
                self._remember(record, self._size)
            await self._storage.sync()
        except OSError as exc:
            raise StorageFailed(f"could not cut the damaged tail off the log: {exc}") from exc
        if lost:
            logger.error(
                "log recovery: the last %d complete record(s) after record %d are damaged (%s):"
                " moved %d bytes to %s and stored lost-message markers %d..%d in their place",
                lost,
                self._written - lost,
                problem,
                len(cut),
                where,
                self._written - lost + 1,
                self._written,
            )
        else:
            logger.warning(
                "log recovery: cut %d bytes off the end after record %d: %s; the bytes are in %s",
                len(cut),
                self._written,
                problem,
                where,
            )
        return lost

    async def aclose(self) -> None:
        """Flush and fsync everything written, then release the storage."""
        if self._broken is None and self._size:
            try:
                await self.sync()
            except StorageFailed:
                logger.critical("final sync failed: %s", self._broken)
        await self._storage.aclose()
