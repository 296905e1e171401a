"""A simulated Redis for the shared-store profile: the real `RedisLog` runs against it.

Theory of operation
-------------------
`RedisLog` talks to Redis through these calls of its coredis client: `register_script` (the
append and import scripts, run through the client only with WAIT), `ensure_replication`
(WAIT), `script_load`, `xrange`, `xrevrange`, `config_get`, and `connection_pool`'s
`get_connection` and `release`, whose connections' `create_request` sends the scripts'
EVALSHA and the reader's XREAD BLOCK (`HeldConnection`). `SimRedisClient` (with `SimPool` and
`SimConnection`) is a fake at exactly that seam, so everything
above it is the real store: its Lua scripts, its reader loop and backoff, its cache, its
error handling. The scripts run in a real Lua 5.1 (lupa; Redis embeds Lua 5.1) with a
`redis.call` that implements the seven commands they use on `SimRedis`'s data, so a bug in a
script is a bug here too.

`SimRedis` is one Redis primary with one replica. The writes of one script call are one
journal entry (the replication stream and the append-only file carry a script's effects as
one MULTI/EXEC); the data is the journal applied in order. Three offsets into the journal say
what survives what:

- `durable`: what the primary's append-only file holds. With `appendfsync always` a write is
  fsynced (the primary holds its lock for `fsync_latency`, so no other client's reply,
  XREAD included, goes out before it) and only then announced; with `everysec` a ticker
  syncs once a second.
- the replica's offset: each write reaches the replica `replication_lag` after it is made, in
  order, now and then much later (a slow replica). WAIT on a connection waits until the
  replica has that connection's own last write, as Redis's WAIT does.
- the journal's end: what the primary holds in memory.

Faults (`SharedStore`): every call takes a random latency each way; an outage makes the store
unreachable for a while (a partition: calls time out; a crash: calls fail at once), and a crash
may lose data: a restart from the append-only file keeps `durable`, a failover to the replica
keeps the replica's offset (then the old primary comes back as a fully synced replica). A
command whose connection an outage cut gets an error even if it was executed (the reply was
lost), which is what a real client sees.

Entry ids are `<ms>-<seq>` pairs compared as numbers; the store only ever uses `<n>-0`.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import coredis.exceptions
import lupa.lua51  # type: ignore[import-untyped]
import trio
from coredis.response.types import StreamEntry

from sim.trace import Trace

T = TypeVar("T")
EntryId = tuple[int, int]
Write = tuple[bytes, ...]  # one write command and its arguments


class Durability(enum.StrEnum):
    """How the simulated Redis keeps data, and so what a crash of its host may lose."""

    AOF_ALWAYS = "aof-always"  # appendfsync always, no replica: a restart loses nothing
    REPLICA_WAIT = "replica-wait"  # appendfsync always and WAIT 1: a failover loses no ack
    EVERYSEC = "everysec"  # appendfsync everysec, no WAIT: a crash loses the recent tail


@dataclass(frozen=True, slots=True)
class SharedStore:
    """The shared store of a profile: its durability, latency and outages."""

    durability: Durability = Durability.AOF_ALWAYS
    latency: tuple[float, float] = (0.0002, 0.004)  # each way, per call
    fsync_latency: tuple[float, float] = (0.0005, 0.01)  # appendfsync always, per write
    replication_lag: tuple[float, float] = (0.001, 0.05)
    slow_replica: float = 0.05  # share of writes that reach the replica 0.5 to 4 s late
    outage_every: float = 0.0  # mean simulated seconds between outages (0: never)
    outage_for: tuple[float, float] = (0.05, 4.0)
    crash_share: float = 0.5  # share of outages that crash the Redis host (else: a partition)
    # Restart every server host when a store crash loses entries (sim/sharedstore.py says why);
    # False leaves them to find the loss themselves and refuse until the operator restarts them.
    restart_hosts_on_loss: bool = True


def parse_id(raw: bytes) -> EntryId:
    """An entry id (`<ms>-<seq>`, or `<ms>` for `-0`); ResponseError if it is not one."""
    ms, _, seq = raw.partition(b"-")
    try:
        return int(ms), int(seq or b"0")
    except ValueError:
        raise coredis.exceptions.ResponseError(f"ERR Invalid stream ID {raw!r}") from None


def _as_bytes(value: object) -> bytes:
    """A command argument as Redis sees it (Lua numbers become their decimal form)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, int | float) and float(value).is_integer():
        return b"%d" % int(value)
    if isinstance(value, int | float):
        return repr(value).encode()
    if isinstance(value, str):
        return value.encode()
    raise coredis.exceptions.ResponseError(f"ERR bad argument {value!r}")


class Dropped(Exception):
    """The connection to the store was cut while a command was out."""


class SimRedis:
    """One Redis primary with one replica, its data, and the faults of its host."""

    def __init__(self, rng: random.Random, faults: SharedStore, trace: Trace) -> None:
        self._rng = rng
        self.durability = faults.durability
        self.faults = faults
        self._trace = trace
        self._lua = lupa.lua51.LuaRuntime(encoding=None, unpack_returned_tuples=False)
        self._lua.globals().redis = self._lua.table_from(
            {b"call": self._lua_call, b"error_reply": self._error_reply}
        )
        self._scripts: dict[str, Any] = {}
        self.journal: list[list[Write]] = []  # each entry: the writes of one script call
        self._batch: list[Write] = []  # the writes of the script call running now
        self._replicated_at: list[float] = []  # when each journal entry reaches the replica
        self.durable = 0  # journal entries in the append-only file
        self.streams: dict[bytes, list[tuple[EntryId, list[bytes]]]] = {}
        self.zsets: dict[bytes, dict[bytes, float]] = {}
        self.counters: dict[bytes, int] = {}  # string keys holding integers (INCR)
        self.lock = trio.Lock()  # Redis runs one command at a time
        self.changed = trio.Event()  # set (and replaced) when data changes or an outage begins
        self.generation = 0  # counts outages: a connection opened before one is cut
        self.down_until = 0.0  # unreachable before this simulated time
        self.partitioned = False  # the current outage swallows calls (else refuses them)
        self.calm_since = 0.0  # when the last outage ended
        self.outages = 0
        self.lost = 0  # entries lost to crashes, in total
        # Called with the streams as they were when a crash lost some of their entries.
        self.on_loss: Callable[[dict[bytes, list[tuple[EntryId, list[bytes]]]]], None] = (
            lambda before: None
        )

    # --- state ------------------------------------------------------------------------------
    @property
    def reachable(self) -> bool:
        """Whether calls reach the primary now."""
        return trio.current_time() >= self.down_until

    def replica_offset(self) -> int:
        """How many journal entries the replica has now."""
        return bisect.bisect_right(self._replicated_at, trio.current_time())

    def replicated_by(self, offset: int) -> float:
        """When the replica will have the first `offset` journal entries (inf: never, the
        journal is shorter now)."""
        if offset > len(self._replicated_at):
            return float("inf")
        return self._replicated_at[offset - 1] if offset else 0.0

    def entries(self, key: bytes) -> list[tuple[EntryId, list[bytes]]]:
        """The stream at `key` (empty if there is none), oldest first."""
        return self.streams.get(key, [])

    def _announce(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    # --- writing ----------------------------------------------------------------------------
    def _apply(self, write: Write) -> bool:
        """Apply one write to the data; whether it changed anything (Redis replicates, and
        counts for WAIT, only writes that did)."""
        command, key, *args = write
        if command == b"XADD":
            stream = self.streams.setdefault(key, [])
            entry_id = parse_id(args[0])
            if (stream and entry_id <= stream[-1][0]) or entry_id == (0, 0):
                raise coredis.exceptions.ResponseError(
                    "ERR The ID specified in XADD is equal or smaller than the target stream "
                    "top item"
                )
            stream.append((entry_id, list(args[1:])))
            return True
        if command == b"ZADD":
            zset = self.zsets.setdefault(key, {})
            changed = zset.get(args[1]) != float(args[0])
            zset[args[1]] = float(args[0])
            return changed
        if command == b"ZREMRANGEBYRANK":
            zset = self.zsets.get(key, {})
            ranked = sorted(zset, key=lambda member: (zset[member], member))
            start, stop = int(args[0]), int(args[1])
            start, stop = (i + len(ranked) if i < 0 else i for i in (start, stop))
            doomed = ranked[max(0, start) : stop + 1]
            for member in doomed:
                del zset[member]
            return bool(doomed)
        if command == b"INCR":
            self.counters[key] = self.counters.get(key, 0) + 1
            return True  # INCR always changes its key, so it always counts for WAIT
        return False

    def _write(self, write: Write) -> None:
        if self._apply(write):
            self._batch.append(write)

    def _commit(self) -> None:
        """The script call has ended: its writes, if any, are one journal entry."""
        if not self._batch:
            return
        self.journal.append(self._batch)
        self._batch = []
        lag = self._rng.uniform(*self.faults.replication_lag)
        if self._rng.random() < self.faults.slow_replica:
            lag = self._rng.uniform(0.5, 4.0)
        previous = self._replicated_at[-1] if self._replicated_at else 0.0
        self._replicated_at.append(max(previous, trio.current_time() + lag))

    def _rebuild(self, keep: int) -> None:
        """Keep the first `keep` journal entries (what the surviving copy holds)."""
        del self.journal[keep:]
        self.streams, self.zsets, self.counters = {}, {}, {}
        for batch in self.journal:
            for write in batch:
                self._apply(write)
        now = trio.current_time()
        self._replicated_at = [now] * len(self.journal)  # the new replica syncs in full
        self.durable = min(self.durable, keep)

    # --- commands: the scripts --------------------------------------------------------------
    def run_script(self, text: str, keys: Sequence[object], args: Sequence[object]) -> object:
        """Run a Lua script as EVAL does, alone and all at once; its reply as Redis sends it."""
        if text not in self._scripts:
            self._scripts[text] = self._lua.eval(
                b"function(KEYS, ARGV)\n" + text.encode() + b"\nend"
            )
        table = self._lua.table_from
        keys_table = table([_as_bytes(k) for k in keys])
        args_table = table([_as_bytes(a) for a in args])
        try:
            return self._reply(self._scripts[text](keys_table, args_table))
        finally:
            self._commit()  # a script that fails midway keeps the writes it made, as in Redis

    def _reply(self, value: Any) -> object:
        """A Lua value as Redis converts a script's result (numbers truncate to integers,
        tables to arrays up to the first nil, `{err=...}` to an error, false to nil)."""
        if value is None or value is False:
            return None
        if value is True:
            return 1
        if isinstance(value, int | float):
            return int(value)
        if isinstance(value, bytes):
            return value
        if lupa.lua51.lua_type(value) == "table":
            err = value[b"err"]
            if err is not None:
                raise coredis.exceptions.ResponseError(_as_bytes(err).decode(errors="replace"))
            items = []
            for index in range(1, len(value) + 1):
                if value[index] is None:
                    break
                items.append(self._reply(value[index]))
            return items
        raise coredis.exceptions.ResponseError(f"ERR script returned {value!r}")

    def _error_reply(self, message: object) -> object:
        return self._lua.table_from({b"err": _as_bytes(message)})

    def _lua_call(self, *raw: object) -> object:
        """`redis.call` for the commands the store's scripts use."""
        command, *args = (_as_bytes(a) for a in raw)
        command = command.upper()
        table = self._lua.table_from
        if command == b"XREVRANGE" and len(args) == 5 and args[3].upper() == b"COUNT":
            found = self.xrange(args[0], args[2], args[1], int(args[4]), reverse=True)
            return table([table([_id(i), table(f)]) for i, f in found])
        if command == b"XRANGE" and len(args) == 3:
            found = self.xrange(args[0], args[1], args[2], None)
            return table([table([_id(i), table(f)]) for i, f in found])
        if command == b"ZSCORE" and len(args) == 2:
            score = self.zsets.get(args[0], {}).get(args[1])
            return False if score is None else b"%d" % score
        if command == b"XADD" and len(args) >= 4 and len(args) % 2 == 0:
            self._write((command, *args))
            return args[1]
        if command in (b"ZADD", b"ZREMRANGEBYRANK") and len(args) == 3:
            before = len(self.zsets.get(args[0], {}))
            self._write((command, *args))
            return abs(len(self.zsets.get(args[0], {})) - before)
        if command == b"INCR" and len(args) == 1:
            self._write((command, *args))
            return self.counters[args[0]]
        raise coredis.exceptions.ResponseError(
            f"ERR the simulated redis has no {command.decode()!r} with {len(args)} arguments"
        )

    # --- commands: reading ------------------------------------------------------------------
    def xrange(
        self, key: bytes, start: bytes, end: bytes, count: int | None, *, reverse: bool = False
    ) -> list[tuple[EntryId, list[bytes]]]:
        """XRANGE (or XREVRANGE with `reverse`) from `start` to `end`, ids inclusive."""
        low = (0, 0) if start == b"-" else parse_id(start)
        high = (2**64, 0) if end == b"+" else parse_id(end)
        found = [(i, f) for i, f in self.entries(key) if low <= i <= high]
        if reverse:
            found.reverse()
        return found if count is None else found[:count]

    def after(self, key: bytes, last: bytes, count: int) -> list[tuple[EntryId, list[bytes]]]:
        """XREAD's answer: up to `count` entries after id `last`."""
        stream = self.entries(key)
        at = bisect.bisect_right([i for i, _ in stream], parse_id(last))
        return stream[at : at + count]

    # --- faults -----------------------------------------------------------------------------
    async def run_faults(self, hosts_quiet: Callable[[], bool]) -> None:
        """Outages at the profile's rate, until cancelled; none begins while `hosts_quiet()`
        (a quiet window checks liveness)."""
        faults = self.faults
        if self.durability is Durability.EVERYSEC:
            # The everysec ticker runs in this task's nursery alongside the outages.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._everysec)
                await self._outages(faults, hosts_quiet)
        else:
            await self._outages(faults, hosts_quiet)

    async def _everysec(self) -> None:
        while True:
            await trio.sleep(1.0)
            self.durable = len(self.journal)

    async def _outages(self, faults: SharedStore, hosts_quiet: Callable[[], bool]) -> None:
        if not faults.outage_every:
            await trio.sleep_forever()
        while True:
            await trio.sleep(self._rng.expovariate(1.0 / faults.outage_every))
            if hosts_quiet():
                continue
            length = self._rng.uniform(*faults.outage_for)
            crash = self._rng.random() < faults.crash_share
            self.outage(length, crash)
            await trio.sleep(length)
            self.calm_since = trio.current_time()

    def outage(self, length: float, crash: bool) -> None:
        """The store is unreachable for `length` seconds from now; with `crash`, its host died
        and comes back from what survives (the append-only file or the replica)."""
        self.outages += 1
        self.generation += 1
        self.down_until = trio.current_time() + length
        self.partitioned = not crash
        before = {key: list(stream) for key, stream in self.streams.items()}
        keep = len(self.journal)
        how = "partition"
        if crash and self.durability is Durability.AOF_ALWAYS:
            how, keep = "restart", self.durable
        elif crash:
            how, keep = "failover", self.replica_offset()
            if self.durability is Durability.EVERYSEC and self._rng.random() < 0.5:
                how, keep = "restart", self.durable
        if keep < len(self.journal):
            self._rebuild(keep)
        lost = sum(map(len, before.values())) - sum(map(len, self.streams.values()))
        self.lost += lost
        self._trace.record("store_outage", how=how, seconds=round(length, 6), lost=lost)
        self._announce()
        if lost:
            self.on_loss(before)

    def heal(self) -> None:
        """End the outage now (the fault-free phase begins)."""
        if not self.reachable:
            self.down_until = trio.current_time()
            self.calm_since = trio.current_time()
            self._trace.record("store_healed")


def _id(entry_id: EntryId) -> bytes:
    return b"%d-%d" % entry_id


def _entry(found: tuple[EntryId, list[bytes]]) -> StreamEntry:
    entry_id, fields = found
    values: OrderedDict[str | bytes, str | bytes] = OrderedDict(
        zip(fields[0::2], fields[1::2], strict=True)
    )
    return StreamEntry(_id(entry_id), values)


class SimScript:
    """What `register_script` returns: awaitable with keys and args, as coredis's Script, with
    its text and SHA1 for EVALSHA."""

    def __init__(self, client: SimRedisClient, text: str) -> None:
        self._client = client
        self.script = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(self, keys: Sequence[object], args: Sequence[object]) -> object:
        return await self._client.script(self.script, keys, args)


class SimConnection:
    """A connection of the pool as `HeldConnection` uses it: `create_request` with EVALSHA or
    XREAD, replies raw. It never breaks: an outage fails the command (`_command`), as a broken
    connection does, and the store's next command would get another connection anyway."""

    usable = True

    def __init__(self, client: SimRedisClient) -> None:
        self._client = client

    async def create_request(self, *command: object, disconnect_on_cancellation: bool) -> object:
        name, *args = (_as_bytes(part) for part in command)
        if name == b"EVALSHA":
            sha, count, *rest = args
            text = self._client.scripts.get(sha.decode())
            if text is None:
                raise coredis.exceptions.NoScriptError("NOSCRIPT No matching script")
            keys = rest[: int(count)]
            return await self._client.script(text, keys, rest[int(count) :])
        if name == b"XREAD" and args[0] == b"COUNT" and args[2] == b"BLOCK":
            key, last = args[-2:]
            reply = await self._client.xread(
                {key.decode(): last.decode()}, count=int(args[1]), block=int(args[3])
            )
            if reply is None:
                return None
            return {
                k: [[e.identifier, [x for pair in e.field_values.items() for x in pair]] for e in v]
                for k, v in reply.items()
            }
        raise AssertionError(f"the simulated connection does not know {command!r}")


class SimPool:
    """The client's `connection_pool`: one connection for whoever asks."""

    def __init__(self, client: SimRedisClient) -> None:
        self._connection = SimConnection(client)

    async def get_connection(self) -> SimConnection:
        return self._connection

    def release(self, connection: SimConnection) -> None:
        pass


class SimRedisClient:
    """One server process's connection to `SimRedis`, at the seam `RedisLog` calls."""

    def __init__(self, store: SimRedis, rng: random.Random, timeout: float) -> None:
        self._store = store
        self._rng = rng
        self._timeout = timeout
        self._wait: tuple[int, int] | None = None  # ensure_replication's (replicas, timeout_ms)
        self._written = 0  # the journal offset of this connection's last write (Redis's woff)
        self.scripts: dict[str, str] = {}  # by SHA1, for EVALSHA
        self.connection_pool = SimPool(self)

    def register_script(self, text: str) -> SimScript:
        script = SimScript(self, text)
        self.scripts[script.sha] = text  # Redis keeps what it ran; the sim knows them all
        return script

    async def script_load(self, text: str) -> str:
        script = self.register_script(text)
        return script.sha

    @contextmanager
    def ensure_replication(self, replicas: int = 1, timeout_ms: int = 100) -> Iterator[Any]:
        saved, self._wait = self._wait, (replicas, timeout_ms)
        try:
            yield self
        finally:
            self._wait = saved

    # --- the commands -----------------------------------------------------------------------
    async def script(self, text: str, keys: Sequence[object], args: Sequence[object]) -> object:
        wait = self._wait

        async def run() -> object:
            store = self._store
            async with store.lock:
                before = len(store.journal)
                reply = store.run_script(text, keys, args)
                if len(store.journal) > before:
                    self._written = len(store.journal)
                    await self._sync(store)
            if wait is not None:
                await self._replicate(*wait)
            return reply

        return await self._command(run)

    async def _sync(self, store: SimRedis) -> None:
        """appendfsync always: the write is fsynced before anybody is answered."""
        generation = store.generation
        if store.durability is not Durability.EVERYSEC:
            await trio.sleep(self._rng.uniform(*store.faults.fsync_latency))
            if store.generation != generation:
                raise Dropped
            store.durable = len(store.journal)
        store._announce()

    async def _replicate(self, replicas: int, timeout_ms: int) -> None:
        """WAIT: until the replica has this connection's last write, or the timeout."""
        store = self._store
        deadline = trio.current_time() + timeout_ms / 1000
        await trio.sleep_until(min(deadline, store.replicated_by(self._written)))
        if store.replica_offset() < self._written:
            raise coredis.exceptions.ReplicationError(b"EVALSHA", replicas, timeout_ms)

    async def xread(
        self, streams: dict[str, str], count: int, block: int
    ) -> dict[bytes, tuple[StreamEntry, ...]] | None:
        ((key, last),) = streams.items()
        key_b, last_b = key.encode(), last.encode()

        async def run() -> dict[bytes, tuple[StreamEntry, ...]] | None:
            store = self._store
            generation = store.generation
            with trio.move_on_after(block / 1000):
                while True:
                    async with store.lock:
                        found = store.after(key_b, last_b, count)
                        changed = store.changed
                    if found:
                        return {key_b: tuple(_entry(e) for e in found)}
                    await changed.wait()
                    if store.generation != generation:
                        raise Dropped
            return None

        return await self._command(run)

    async def xrange(
        self, key: str, start: str, end: str, count: int | None = None
    ) -> tuple[StreamEntry, ...]:
        async def run() -> tuple[StreamEntry, ...]:
            async with self._store.lock:
                found = self._store.xrange(key.encode(), start.encode(), end.encode(), count)
            return tuple(_entry(e) for e in found)

        return await self._command(run)

    async def xrevrange(self, key: str, count: int | None = None) -> tuple[StreamEntry, ...]:
        async def run() -> tuple[StreamEntry, ...]:
            async with self._store.lock:
                found = self._store.xrange(key.encode(), b"-", b"+", count, reverse=True)
            return tuple(_entry(e) for e in found)

        return await self._command(run)

    async def config_get(self, names: Sequence[str]) -> dict[bytes, bytes]:
        fsync = b"everysec" if self._store.durability is Durability.EVERYSEC else b"always"
        settings = {b"appendonly": b"yes", b"appendfsync": fsync}

        async def run() -> dict[bytes, bytes]:
            return {n.encode(): settings[n.encode()] for n in names if n.encode() in settings}

        return await self._command(run)

    # --- the connection ---------------------------------------------------------------------
    async def _command(self, run: Callable[[], Awaitable[T]]) -> T:
        """Send, run at the store, reply: each leg takes a latency; an outage cuts the
        connection (a crash: an error at once; a partition: nothing until the timeout)."""
        store, faults = self._store, self._store.faults
        generation = store.generation
        with trio.move_on_after(self._timeout):
            try:
                await trio.sleep(self._rng.uniform(*faults.latency))
                if not store.reachable or store.generation != generation:
                    raise Dropped
                reply = await run()
                await trio.sleep(self._rng.uniform(*faults.latency))
                if store.generation != generation:
                    raise Dropped  # executed, but the reply was lost
                return reply
            except Dropped:
                if not store.partitioned:
                    raise coredis.exceptions.ConnectionError("connection reset by peer") from None
                await trio.sleep_forever()
        raise TimeoutError(f"no reply within {self._timeout}s")
