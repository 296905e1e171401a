"""The Redis store: the room's log in one Redis stream that several server processes share.

Theory of operation
-------------------
Layout (docs/redis-store.md): the stream `<key>:log` holds one entry per message, its entry id
`<seq>-0` and its fields `t`, `user`, `text` and, for messages sent with one, `id`; the sorted
set `<key>:ids` maps each (user, id) to its sequence number, trimmed to the newest
DEDUPE_ENTRIES, as the file store remembers them; `<key>:resends` counts resends answered
from it (written only so that WAIT covers them, below).

**Appends are one Lua script.** It reads the stream's last entry id, answers a resend with the
stored number, else XADDs the message with id `<last + 1>-0` and records its (user, id). Redis
runs a script alone and all at once, so two processes (or two tasks) can neither take the same
number nor skip one, and a resend can never slip in between the check and the XADD: dense
numbers and "stored once" hold across every process sharing the stream. XADD with an explicit
id also refuses to go backwards, which the script checks first anyway: it gets the newest
number this process has seen, with that entry's `t` and `user`, and fails (PAPAYA_LOST) if the
stream now ends before it or holds another entry there (a Redis that lost entries, say after a
failover to a replica that did not have them, and other processes numbered new messages
since). The store then refuses appends and reads until restart, rather than hand out those
numbers a second time or serve a history that is gone.

**Durability.** Redis replies to a script after its writes are in the AOF, and with
`appendfsync always` only after they are fsynced; Redis also holds back every other client's
reply (XREADs included) until then. So with `fsync = "always"` the store checks at open that
Redis runs with `appendonly yes` and `appendfsync always`, and an acknowledged message is on
the Redis host's disk, and nobody saw a message that a crash could take back. With
`redis_replicas = R` it also sends WAIT R on the same connection and reports `storage_failed`
unless R replicas have the entry within half of `redis_timeout` (the entry is then stored on the
primary; the sender's resend with the same id is answered with its number, stored once). WAIT
waits for the connection's own last write, so a resend answered from the ids set also writes
(INCR `<key>:resends`): that write follows the original entry in the one replication stream,
so WAIT confirms the resend only once the replicas have the original too, whichever process
(connection) stored it.
With `"interval"` and `"never"` the store does not check Redis's persistence settings.

**Connections.** The scripts (without WAIT) and the reader's XREAD BLOCK each go over a
connection of the client's pool held for them (`HeldConnection`), sent to directly: about
half the Python work per command of the client's own path. Everything else, and the scripts
with WAIT, go through the client.

**Reading.** Every process runs one reader (`run`): a loop of XREAD BLOCK after its head,
which learns each new entry. This process's own appends are learned as they return. The head
is the newest number up to which every record has been learned, so it moves densely, and each
move tells the broadcaster, as the file store does after an append; the records up to it are
in a bounded cache of recent records (the startup read of the stream's tail fills it too).
`read_after` serves from the cache and fetches older records with XRANGE by number.

**Failures.** Every Redis error or timeout (`redis_timeout`) in an append raises
StorageFailed: the sender gets `storage_failed` and never an ack for an entry that is not
stored. If Redis stored it but the reply was lost, the resend with the same id finds it; the
client library's own retries are off, as a blind retry would store a message without an id
twice. A read that Redis cannot serve closes that client's session with a fatal
`storage_failed`; it reconnects with `since` and loses nothing. The reader retries with
exponential backoff on trio time (RETRY_MIN to RETRY_MAX), logs the outage once when it
starts and once when it ends, and carries on from its last position, so live delivery resumes
with nothing lost or repeated. After every read, and after a read error before the next one,
it checks that the stream still holds the head's entry exactly as this process learned it,
before learning what it read (the client library replaces a lost connection silently between
commands, so a failover need not show as an error): a read that holds that entry is the check
itself (the usual case for this process's own messages, whose append reply is let through
first), otherwise an XRANGE of the head's entry is; on a mismatch the log
fails as on PAPAYA_LOST and the reader learns nothing more. Until the check passes, where
Redis can lose what clients were shown (`redis_replicas`, or fsync other than "always"),
`read_after` refuses rather than serve the cache, which may hold entries Redis lost; with
`appendfsync always` and no replicas nothing shown can be lost, so the cache is served.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import coredis
import coredis.exceptions
import trio
from coredis.response.types import StreamEntry
from coredis.retry import NoRetryPolicy

from papaya_trio.logstore import AppendResult, FsyncPolicy, StorageFailed
from papaya_trio.records import Record, record_meta, with_meta

logger = logging.getLogger(__name__)

DEDUPE_ENTRIES = 65536
READ_BATCH = 512  # entries one XREAD or XRANGE fetches at most
PENDING_RECORDS = 4 * READ_BATCH  # records held while waiting for a predecessor
RESTORE_BATCH = 256  # records one import script call stores
RETRY_MIN = 0.1  # seconds before the reader's first retry after a failure
RETRY_MAX = 5.0
BLOCK_MAX_MS = 5000  # longest XREAD BLOCK; always below redis_timeout

REDIS_ERRORS = (coredis.exceptions.RedisError, OSError)  # TimeoutError is an OSError

# KEYS: stream, ids, resends. ARGV: newest seq this process has seen, time_ms, user, text,
# has_id ("1" or "0"), client id, ids to keep, meta, and the `t` and `user` this process holds
# for its newest seq ('' if none). Returns {seq, duplicate}. A resend answered from the ids
# set still writes (INCR resends): WAIT waits for the calling connection's last write, and
# this one follows the original entry in the replication stream.
APPEND_SCRIPT = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local head = 0
if #last > 0 then head = tonumber(string.match(last[1][1], '^(%d+)')) end
if head < tonumber(ARGV[1]) then
  return redis.error_reply('PAPAYA_LOST the stream ends at ' .. head ..
    ' but this server has seen entry ' .. ARGV[1])
end
if ARGV[9] ~= '' then
  local held = redis.call('XRANGE', KEYS[1], ARGV[1] .. '-0', ARGV[1] .. '-0')
  local fields = {}
  if #held > 0 then
    for i = 1, #held[1][2], 2 do fields[held[1][2][i]] = held[1][2][i + 1] end
  end
  if fields['t'] ~= ARGV[9] or fields['user'] ~= ARGV[10] then
    return redis.error_reply('PAPAYA_LOST entry ' .. ARGV[1] ..
      ' in the stream is not the one this server has seen')
  end
end
local member = nil
if ARGV[5] == '1' then
  member = string.len(ARGV[3]) .. ':' .. ARGV[3] .. ARGV[6]
  local seen = redis.call('ZSCORE', KEYS[2], member)
  if seen then
    redis.call('INCR', KEYS[3])
    return {tonumber(seen), 1}
  end
end
local seq = head + 1
local id = string.format('%d-0', seq)
local fields = {'t', ARGV[2], 'user', ARGV[3], 'text', ARGV[4]}
if member then
  table.insert(fields, 'id')
  table.insert(fields, ARGV[6])
end
if ARGV[8] ~= '' then
  table.insert(fields, 'm')
  table.insert(fields, ARGV[8])
end
redis.call('XADD', KEYS[1], id, unpack(fields))
if member then
  redis.call('ZADD', KEYS[2], seq, member)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -1 - tonumber(ARGV[7]))
end
return {seq, 0}
"""

# KEYS: stream, ids. ARGV: ids to keep, then per record: seq, time_ms, user, text, has_id, id,
# meta (the record's optional fields as JSON, or '').
# Stores them as they are if each follows the stream's last entry by one; returns the new last.
RESTORE_SCRIPT = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local head = 0
if #last > 0 then head = tonumber(string.match(last[1][1], '^(%d+)')) end
for i = 2, #ARGV, 7 do
  local seq = tonumber(ARGV[i])
  if seq ~= head + 1 then
    return redis.error_reply('PAPAYA_ORDER record ' .. seq .. ' does not follow ' .. head)
  end
  local id = string.format('%d-0', seq)
  local fields = {'t', ARGV[i + 1], 'user', ARGV[i + 2], 'text', ARGV[i + 3]}
  if ARGV[i + 4] == '1' then
    table.insert(fields, 'id')
    table.insert(fields, ARGV[i + 5])
  end
  if ARGV[i + 6] ~= '' then
    table.insert(fields, 'm')
    table.insert(fields, ARGV[i + 6])
  end
  redis.call('XADD', KEYS[1], id, unpack(fields))
  if ARGV[i + 4] == '1' then
    local member = string.len(ARGV[i + 2]) .. ':' .. ARGV[i + 2] .. ARGV[i + 5]
    redis.call('ZADD', KEYS[2], seq, member)
  end
  head = seq
end
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -1 - tonumber(ARGV[1]))
return head
"""


class RedisStoreError(Exception):
    """The Redis store cannot be opened; the message says why."""


class HeldConnection:
    """One connection of the client's pool, kept for one kind of command and sent to directly:
    about half the Python work per command of going through the client (its retry policy,
    pool lease and telemetry on every call). Several tasks may send at once (coredis matches
    the replies in order). A connection that broke is handed back and the next command takes
    another from the pool, so a failure is one command's error, as through the client."""

    def __init__(self, client: Any) -> None:
        self._pool = client.connection_pool
        self._connection: Any = None

    async def send(self, *command: Any, block: bool = False) -> Any:
        """Send `command` and return its raw reply; `block`: a blocking command, whose
        connection is closed if the wait for its reply is cancelled."""
        connection = self._connection
        if connection is None or not connection.usable:
            connection = await self._pool.get_connection()
            if self._connection is not None and self._connection.usable:
                self._pool.release(connection)  # another task took one meanwhile: use that
                connection = self._connection
            else:
                if self._connection is not None:
                    self._pool.release(self._connection)
                self._connection = connection
        return await connection.create_request(*command, disconnect_on_cancellation=block)


class RedisLog:
    """The room's log in a Redis stream. Open it with `open_redis_log(...)`."""

    def __init__(
        self,
        client: coredis.Redis[bytes],
        key: str,
        *,
        clock_ms: Callable[[], int],
        fsync: FsyncPolicy,
        replicas: int,
        timeout: float,
        cache_records: int,
        dedupe_entries: int,
    ) -> None:
        self._client = client
        self.stream = f"{key}:log"
        self.ids = f"{key}:ids"
        self.resends = f"{key}:resends"
        self._clock_ms = clock_ms
        self.fsync = fsync
        self._replicas = replicas
        self._timeout = timeout
        self._cache_records = cache_records
        self._dedupe_entries = dedupe_entries
        self._append_script = client.register_script(APPEND_SCRIPT)
        self._restore_script = client.register_script(RESTORE_SCRIPT)
        self._writes = HeldConnection(client)  # the scripts, without WAIT
        self._reads = HeldConnection(client)  # the reader's XREAD BLOCK
        self._visible = 0
        self._cache: list[Record] = []  # consecutive records, the newest is the head
        self._pending: dict[int, Record] = {}  # records learned before their predecessors
        self._broken: str | None = None
        self._down: str | None = None  # why the reader cannot reach Redis, while it cannot
        # After a read error, until the head's entry is found unchanged: the cache may hold
        # entries Redis lost, so it is not served where Redis can lose what was shown (a
        # failover to a replica, or a crash without appendfsync always; module docstring).
        self._unchecked = False
        self._shown_may_be_lost = replicas > 0 or fsync is not FsyncPolicy.ALWAYS
        self.on_visible: Callable[[int], None] = lambda head: None

    @property
    def head(self) -> int:
        """Sequence number of the newest record this process knows of."""
        return self._visible

    @property
    def first(self) -> int:
        """Sequence number of the oldest record (the stream is never trimmed)."""
        return 1 if self._visible else 0

    @property
    def broken(self) -> str | None:
        """Why the store refuses appends, or None while it accepts them."""
        return self._broken

    def __repr__(self) -> str:
        state = f" DOWN ({self._down})" if self._down else ""
        return f"<RedisLog {self.stream} head={self._visible} fsync={self.fsync}{state}>"

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
        """Store one message atomically; see the module docstring for when it returns."""
        if self._broken is not None:
            raise StorageFailed(f"the log refuses messages after an error: {self._broken}")
        time_ms = self._clock_ms()
        draft = Record(0, time_ms, user, text, client_id, action, dialect, verified)
        args = [self._visible, time_ms, user, text, "0" if client_id is None else "1"]
        args += [client_id or "", self._dedupe_entries, record_meta(draft)]
        held = self._held()
        args += ["", ""] if held is None else [held.time_ms, held.user]
        reply = await self._call(self._append_script, args)
        seq, duplicate = int(reply[0]), bool(reply[1])
        if not duplicate:
            self._learn([replace(draft, seq=seq)])
        return AppendResult(seq, duplicate)

    async def restore(self, records: Sequence[Record]) -> None:
        """Append `records` as they are (log import); each must follow the head by one."""
        for start in range(0, len(records), RESTORE_BATCH):
            batch = records[start : start + RESTORE_BATCH]
            args: list[object] = [self._dedupe_entries]
            for record in batch:
                has_id = "0" if record.client_id is None else "1"
                fields = [record.time_ms, record.user, record.text, has_id, record.client_id or ""]
                args += [record.seq, *fields, record_meta(record)]
            await self._call(self._restore_script, args)
            self._learn(batch)

    async def _call(self, script: Any, args: list[Any]) -> Any:
        """Run a write script, with WAIT for replicas when asked; map failures."""
        keys = [self.stream, self.ids, self.resends]  # the import script uses the first two
        try:
            if self._replicas:
                timeout_ms = math.ceil(self._timeout * 500)  # WAIT must end before the reply is due
                with self._client.ensure_replication(self._replicas, timeout_ms):
                    return await script(keys=keys, args=args)
            command = (b"EVALSHA", script.sha, len(keys), *keys, *args)
            try:
                return await self._writes.send(*command)
            except coredis.exceptions.NoScriptError:  # a Redis that lost its scripts; not run
                await self._client.script_load(script.script)
                return await self._writes.send(*command)
        except coredis.exceptions.ResponseError as exc:
            if str(exc).startswith("PAPAYA_LOST"):
                self._fail(str(exc).removeprefix("PAPAYA_LOST "))
            raise StorageFailed(f"redis refused the message: {exc}") from exc
        except coredis.exceptions.ReplicationError as exc:
            raise StorageFailed(f"not copied to {self._replicas} replicas in time") from exc
        except REDIS_ERRORS as exc:
            raise StorageFailed(f"redis is unavailable: {exc}") from exc

    def _fail(self, why: str) -> None:
        """Redis no longer holds what this process has seen: refuse appends and reads (and
        stop learning) until restart, rather than continue a history that is gone."""
        if self._broken is None:
            logger.critical("log refuses appends until restart: %s", why)
            self._broken = why
            self._pending.clear()

    def _held(self) -> Record | None:
        """The record at the head as this process learned it (None before the first)."""
        if self._cache and self._cache[-1].seq == self._visible:
            return self._cache[-1]
        return None

    async def _check_head(self) -> None:
        """Fail the log if the stream no longer holds the head's entry as this process
        learned it (Redis lost entries, and may have renumbered others)."""
        held = self._held()
        if held is None:
            return
        at = f"{held.seq}-0"
        entries = await self._client.xrange(self.stream, at, at, count=1)
        if not entries:
            self._fail(f"the stream no longer holds entry {held.seq}, which this server has seen")
        elif _record(entries[0]) != held:
            self._fail(f"entry {held.seq} in the stream is not the one this server has seen")

    def _entries(self, reply: Any) -> Any:
        """The raw entries of the stream in an XREAD reply (RESP3: a map by key; None when
        the BLOCK ran out); StorageFailed for any other reply."""
        if reply is None:
            return ()
        if not isinstance(reply, dict):
            raise StorageFailed(f"XREAD answered {reply!r:.80}")
        return reply.get(self.stream.encode(), ())

    def _read_holds_head(self, records: Sequence[Record]) -> bool:
        """Whether a read's `records` (consecutive, oldest first) hold the head's entry exactly
        as this process learned it: then the server that answered the read still has it."""
        held = self._held()
        at = held.seq - records[0].seq if held is not None and records else -1
        return 0 <= at < len(records) and records[at] == held

    # --- learning what is in the stream -----------------------------------------------------
    def _learn(self, records: Sequence[Record]) -> None:
        """Take in records known to be in the stream; move the head over every consecutive one.

        Concurrent appends return in any order, and another process's entries arrive through
        the reader, so a record may come before its predecessor: it waits in `_pending` until
        the gap is filled. The reader always reads after the head, so it fills every gap even
        if `_pending` was dropped at its bound.
        """
        for record in records:
            if record.seq > self._visible:
                self._pending[record.seq] = record
        head = self._visible
        while head + 1 in self._pending:
            head += 1
            self._cache.append(self._pending.pop(head))
        if len(self._pending) > PENDING_RECORDS:
            self._pending.clear()
        if len(self._cache) >= 2 * self._cache_records:
            del self._cache[: len(self._cache) - self._cache_records]
        if head > self._visible:
            self._visible = head
            self.on_visible(head)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The stream reader: learn every new entry, whoever stored it; never returns."""
        task_status.started()
        block_ms = max(1, min(BLOCK_MAX_MS, int(self._timeout * 500)))
        retry = RETRY_MIN
        while True:
            if self._broken is not None:
                await trio.sleep_forever()  # what follows in the stream is not our history
            try:
                if self._unchecked:
                    await self._check_head()
                    self._unchecked = False
                    if self._broken is not None:
                        continue
                reply = await self._reads.send(
                    *(b"XREAD", b"COUNT", READ_BATCH, b"BLOCK", block_ms, b"STREAMS"),
                    *(self.stream, f"{self._visible}-0"),
                    block=True,
                )
                records = [_record(_stream_entry(entry)) for entry in self._entries(reply)]
                # The client library replaces a lost connection silently between commands, so
                # a failover may not show as an error: check after every read, before learning.
                # A read that holds the head's entry is the check itself; when it holds only
                # entries after it, this process's own append of them may be answered in the
                # same moment: let that learn them first (one checkpoint), then look again.
                if not self._read_holds_head(records):
                    await trio.lowlevel.checkpoint()
                    if not self._read_holds_head(records):
                        await self._check_head()
            except (*REDIS_ERRORS, StorageFailed) as exc:
                self._unchecked = True
                if self._down is None:
                    self._down = str(exc) or type(exc).__name__
                    logger.error("redis stream unreadable, retrying: %s", self._down)
                await trio.sleep(retry)
                retry = min(RETRY_MAX, retry * 2)
                continue
            if self._down is not None:
                logger.warning("redis stream readable again; delivery resumes after %d", self.head)
                self._down = None
            retry = RETRY_MIN
            if self._broken is None:
                self._learn(records)

    # --- reading ----------------------------------------------------------------------------
    async def read_after(self, cursor: int, limit: int) -> list[Record]:
        """Up to `limit` records after `cursor` (not past the head), oldest first."""
        if self._broken is not None:
            raise StorageFailed(f"the log is unusable until restart: {self._broken}")
        if self._unchecked and self._shown_may_be_lost:
            raise StorageFailed(f"redis is unavailable: {self._down}")
        last = min(self._visible, cursor + limit)
        if last <= cursor:
            return []
        first = cursor + 1
        if self._cache and self._cache[0].seq <= first:
            base = self._cache[0].seq
            return self._cache[first - base : last - base + 1]
        try:
            entries = await self._client.xrange(
                self.stream, f"{first}-0", f"{last}-0", count=min(limit, READ_BATCH)
            )
        except REDIS_ERRORS as exc:
            raise StorageFailed(f"redis is unavailable: {exc}") from exc
        records = [_record(entry) for entry in entries]
        if not records or records[0].seq != first:
            raise StorageFailed(f"the redis stream lacks entry {first}")
        return records

    async def catch_up(self, seq: int) -> None:
        """Learn the stream's entries up to `seq` now, rather than when the reader gets them."""
        for _ in range(seq // READ_BATCH + 2):  # bounded: each round learns a batch or stops
            if self._visible >= seq:
                return
            try:
                entries = await self._client.xrange(
                    self.stream, f"{self._visible + 1}-0", "+", count=READ_BATCH
                )
            except REDIS_ERRORS as exc:
                raise StorageFailed(f"redis is unavailable: {exc}") from exc
            if not entries:
                return  # the stream has no `seq` (yet): the session clamps it to the head
            self._learn([_record(entry) for entry in entries])

    def recent(self, count: int) -> list[Record]:
        """The newest `count` cached records, oldest first (the cache ends near the head)."""
        return self._cache[-count:] if count > 0 else []

    # --- opening and closing ----------------------------------------------------------------
    async def _load(self) -> None:
        """Read the stream's tail into the cache; check Redis's persistence settings."""
        if self.fsync is FsyncPolicy.ALWAYS:
            config = await self._client.config_get(["appendonly", "appendfsync"])
            settings = {bytes(k).decode(): bytes(v).decode() for k, v in config.items()}
            if settings.get("appendonly") != "yes" or settings.get("appendfsync") != "always":
                raise RedisStoreError(
                    'fsync = "always" needs redis with appendonly yes and appendfsync always '
                    f"(it has appendonly {settings.get('appendonly')}, appendfsync "
                    f'{settings.get("appendfsync")}); or set fsync = "interval"'
                )
        tail = await self._client.xrevrange(self.stream, count=self._cache_records)
        self._cache = [_record(entry) for entry in reversed(tail)]
        self._visible = self._cache[-1].seq if self._cache else 0

    async def aclose(self) -> None:
        """Nothing to flush: every acknowledged append is already in Redis."""


def _stream_entry(raw: Any) -> StreamEntry:
    """A stream entry as a raw reply holds it (`[id, [field, value, ...]]`), as the client's
    commands give it; StorageFailed if it is not one."""
    try:
        identifier, fields = raw
        return StreamEntry(identifier, OrderedDict(zip(fields[0::2], fields[1::2], strict=True)))
    except (TypeError, ValueError) as exc:
        raise StorageFailed(f"not a stream entry: {raw!r:.80}") from exc


def _record(entry: Any) -> Record:
    """A stream entry as a Record; StorageFailed if it is not one of ours."""
    fields = entry.field_values
    try:
        client_id = fields.get(b"id")
        meta = fields.get(b"m")
        return with_meta(
            Record(
                seq=int(entry.identifier.split(b"-")[0]),
                time_ms=int(fields[b"t"]),
                user=fields[b"user"].decode(),
                text=fields[b"text"].decode(),
                client_id=None if client_id is None else client_id.decode(),
            ),
            None if meta is None else meta.decode(),
        )
    except (
        KeyError,
        ValueError,
        AttributeError,
        TypeError,
    ) as exc:  # UnicodeDecodeError is a ValueError
        why = f"stream entry {entry.identifier!r} is not a message: {exc!r}"
        raise StorageFailed(why) from None


@asynccontextmanager
async def open_redis_log(
    url: str,
    *,
    key: str,
    clock_ms: Callable[[], int],
    fsync: FsyncPolicy = FsyncPolicy.ALWAYS,
    replicas: int = 0,
    command_timeout: float = 5.0,
    cache_records: int = 4096,
    dedupe_entries: int = DEDUPE_ENTRIES,
) -> AsyncIterator[RedisLog]:
    """Connect to the Redis at `url` (redis://, rediss:// or unix://) and open the room's log.

    Raises RedisStoreError if Redis cannot be reached or does not fit `fsync`.
    """
    client = coredis.Redis.from_url(
        url,
        stream_timeout=command_timeout,
        connect_timeout=command_timeout,
        decode_responses=False,
        # No retries behind our back: an append retried after a lost reply, whose first
        # attempt was stored, would store a message without an id twice.
        retry_policy=NoRetryPolicy(),
    )
    try:
        async with client:
            log = RedisLog(
                client,
                key,
                clock_ms=clock_ms,
                fsync=fsync,
                replicas=replicas,
                timeout=command_timeout,
                cache_records=cache_records,
                dedupe_entries=dedupe_entries,
            )
            try:
                await log._load()
            except REDIS_ERRORS as exc:
                raise RedisStoreError(f"cannot use redis at {url}: {exc}") from None
            yield log
    except BaseExceptionGroup as group:
        # The client's task group wraps whatever the body raised: hand the caller that one.
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            raise group.exceptions[0] from None
        raise
