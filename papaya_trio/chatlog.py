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
from papaya_trio.storage import Storage

logger = logging.getLogger(__name__)

INDEX_STRIDE = 128
READ_CHUNK = 64 * 1024
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


@dataclass(frozen=True, slots=True)
class Recovery:
    """What opening the log found and repaired."""

    records: int
    truncated_bytes: int
    problem: str | None


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
    ) -> None:
        self._storage = storage
        self._clock_ms = clock_ms
        self.fsync = fsync
        self.sync_interval = sync_interval
        self._cache_records = cache_records
        self._dedupe_entries = dedupe_entries
        self._lock = trio.Lock()
        self._size = 0
        self._written = 0  # newest record in storage
        self._synced = 0  # newest record known durable
        self._visible = 0  # newest record readers may see
        self._offsets: list[int] = []  # offset of record 1 + i * INDEX_STRIDE
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

        Raises LogCorrupted if a bad record is followed by good ones (a damaged middle is
        never truncated away silently).
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
    def broken(self) -> str | None:
        """Why the log refuses appends, or None while it accepts them."""
        return self._broken

    def __repr__(self) -> str:
        return f"<ChatLog head={self._visible} written={self._written} fsync={self.fsync}>"

    # --- writing ----------------------------------------------------------------------------
    async def append(self, user: str, text: str, client_id: str | None = None) -> AppendResult:
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
                record = Record(self._written + 1, self._clock_ms(), user, text, client_id)
                await self._write(encode_record(record))
                self._remember(record, self._size)
                result = AppendResult(record.seq)
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
        """The background work: the interval sync with `fsync = "interval"`, else none."""
        if self.fsync is FsyncPolicy.INTERVAL:
            await self.run_interval_sync(self.sync_interval, task_status=task_status)
        else:
            task_status.started()
            await trio.sleep_forever()

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
        if (record.seq - 1) % INDEX_STRIDE == 0:
            line_length = len(encode_record(record))
            self._offsets.append(end_offset - line_length)
        self._cache.append(record)
        if len(self._cache) >= 2 * self._cache_records:
            del self._cache[: len(self._cache) - self._cache_records]
        if record.client_id is not None:
            self._dedupe[(record.user, record.client_id)] = record.seq
            if len(self._dedupe) > self._dedupe_entries:
                self._dedupe.popitem(last=False)

    # --- reading ----------------------------------------------------------------------------
    async def read_after(self, cursor: int, limit: int) -> list[Record]:
        """Up to `limit` visible records with sequence numbers above `cursor`, oldest first."""
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
        offset = self._offsets[block]
        scanner = RecordScanner(offset, after_seq=block * INDEX_STRIDE)
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
        scanner = RecordScanner()
        offset = 0
        while offset < total and scanner.problem is None:
            chunk = await self._storage.read(offset, min(READ_CHUNK, total - offset))
            if not chunk:
                break
            offset += len(chunk)
            for scanned in scanner.feed(chunk):
                self._remember(scanned.record, scanned.end_offset)
        good_end = scanner.offset
        problem = scanner.problem
        if problem is None and scanner.pending:
            problem = f"torn record ({scanner.pending} bytes without a line end)"
        if problem is not None and scanner.bad_offset is not None:
            await self._refuse_if_damaged_middle(scanner.bad_offset, total, problem)
        if good_end < total:
            try:
                await self._storage.truncate(good_end)
                await self._storage.sync()
            except OSError as exc:
                raise StorageFailed(f"could not cut the damaged tail off the log: {exc}") from exc
            logger.warning(
                "log recovery: cut %d bytes off the end after record %d: %s",
                total - good_end,
                scanner.last_seq,
                problem,
            )
        self._size = good_end
        self._synced = self._visible = self._written
        return Recovery(scanner.last_seq, total - good_end, problem)

    async def _refuse_if_damaged_middle(self, bad_offset: int, total: int, problem: str) -> None:
        """Raise LogCorrupted if any intact record follows the bad one."""
        offset, pending, first_line = bad_offset, b"", True
        while offset < total:
            chunk = await self._storage.read(offset, min(READ_CHUNK, total - offset))
            if not chunk:
                break
            offset += len(chunk)
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if not first_line and _intact(line):
                    raise LogCorrupted(
                        f"log record at byte {bad_offset} is damaged ({problem}) and intact "
                        "records follow it; refusing to truncate, repair the file by hand"
                    )
                first_line = False

    async def aclose(self) -> None:
        """Flush and fsync everything written, then release the storage."""
        if self._broken is None and self._size:
            try:
                await self.sync()
            except StorageFailed:
                logger.critical("final sync failed: %s", self._broken)
        await self._storage.aclose()


def _intact(line: bytes) -> bool:
    try:
        decode_record(line)
    except CorruptRecord:
        return False
    return True
