"""The simulated world: the real server on a simulated disk and network, and what actors share.

`ServerHost` owns the server's lives. `start` opens the log from the disk (recovering it),
builds the real `Room` and `ChatServer` and serves on the simulated listener. `crash` is a
power cut: the disk drops what was not synced, every connection is reset and the server's
cancel scope is cancelled, so no code of the dead server runs again. `shutdown` is the real
graceful shutdown, timed against its deadline. Each life is an epoch of the oracle.
`sim.sharedstore.StoreHost` is the same host on a shared stream store instead of the disk
(its own ports, its own `_open` and `_background`).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from papaya_trio.admission import AdmissionSettings
from papaya_trio.chatlog import ChatLog, FsyncPolicy, StorageFailed
from papaya_trio.logstore import LogStore
from papaya_trio.records import Record
from papaya_trio.redislog import RedisLog
from papaya_trio.room import Room, RoomSettings
from papaya_trio.server import ChatServer
from papaya_trio.session import Session
from papaya_trio.transports.http import WebSettings
from papaya_trio.transports.static import StaticSite
from papaya_trio.transports.websocket import WebSocketSettings
from sim.disk import SimDisk
from sim.instrument import TaskCounter
from sim.invariants import DURABLE, SHUTDOWN_DEADLINE, Failure, Oracle, read_log, read_more
from sim.network import HTTP_PORT, TCP_PORT, SimNetwork
from sim.profiles import Profile
from sim.trace import Trace

KEY = "k" * 128
EPOCH_MS = 1_764_000_000_000
START_RETRY = 0.5  # simulated seconds before starting again after a failed start
SHUTDOWN_SLACK = 0.001  # the deadline plus scheduling, in simulated seconds
INTERVAL_SLACK = 0.05  # simulated seconds of scheduling around an interval fsync
WS_PING_INTERVAL = 3.0  # simulated seconds; short, so silent WebSocket clients are dropped
WS_PING_TIMEOUT = 4.0  # longer than most stalls, shorter than the longest


def sim_clock_ms() -> int:
    """Record timestamps from trio's (mock) clock, so they are part of the simulation."""
    return EPOCH_MS + int(trio.current_time() * 1000)


def durable_after(profile: Profile) -> float | None:
    """How long after a record is first shown or confirmed it must survive a power cut (see
    `sim.invariants`): an interval, and two of the slowest fsyncs with scheduling slack,
    under "interval" (a record written as one fsync begins waits for the next)."""
    if profile.fsync is FsyncPolicy.ALWAYS:
        return 0.0
    if profile.fsync is FsyncPolicy.INTERVAL:
        return profile.fsync_interval + 2 * profile.disk.sync_latency[1] + INTERVAL_SLACK
    return None


@dataclass(frozen=True, slots=True)
class Components:
    """The server parts the run uses; tests swap in deliberately broken subclasses."""

    log_class: type[ChatLog] = ChatLog
    store_class: type[RedisLog] = RedisLog  # the shared-store profile's store
    room_class: type[Room] = Room
    session_class: type[Session] = Session
    server_class: type[ChatServer] = ChatServer


class Client(Protocol):
    """What the director asks of every simulated client."""

    user: str

    @property
    def settles(self) -> bool:
        """Whether this client must reach the head once faults stop."""
        ...

    def settled(self) -> bool:
        """Connected and caught up with the server's head."""
        ...

    def behind(self, head: int, noted_at: float) -> bool | None:
        """Whether a connection welcomed by `noted_at` that has seen no fault has not reached
        `head` (None: it is newer, still replaying the history it was welcomed with, has seen
        a fault or is not connected: no bound applies; the settling phase still checks it)."""
        ...

    def holds(self) -> list[str | None]:
        """The name its open connection holds in the room (None: a papayaChat connection),
        or nothing when it is not connected."""
        ...

    def member_counts(self) -> Counter[str | None] | None:
        """Its connection's member list, if it keeps one and is connected on a healthy link."""
        ...

    def expect_notice(self, head: int) -> None:
        """A graceful shutdown begins with the log at `head`: a connection that has seen
        everything up to it on a healthy link, with no history request out, is owed the
        `shutdown` error before it ends."""
        ...


class World:
    """What every actor and the director share."""

    #: The longest one append may keep a session from reading its client's next frame: the
    #: local disk's appends are quick (a fault fails them at once), so nothing beyond slack.
    append_bound = 0.0

    def __init__(
        self,
        seed: int,
        profile: Profile,
        components: Components,
        clock: trio.abc.Clock,
        counter: TaskCounter,
        cancel_run: Callable[[], None],
    ) -> None:
        self.seed = seed
        self.profile = profile
        self.counter = counter
        self._clock = clock
        self._cancel_run = cancel_run
        self.trace = Trace(lambda: (clock.current_time(), counter.steps))
        self.clients: list[Client] = []
        self.failure: Failure | None = None
        self.settings = RoomSettings(
            history=profile.history,
            max_message_bytes=profile.max_message_bytes,
            max_line_bytes=3 * profile.max_message_bytes + 1024,
            max_lag=profile.max_lag,
            auth_timeout=5.0,
            papaya_auth_timeout=1.0,
            idle_timeout=profile.idle_timeout,
        )
        self.web = WebSettings(
            StaticSite.browser_client(profile.max_message_bytes),
            WebSocketSettings(
                max_message_bytes=self.settings.max_line_bytes,
                handshake_timeout=5.0,
                ping_interval=WS_PING_INTERVAL,
                ping_timeout=WS_PING_TIMEOUT,
            ),
        )
        self.oracle = Oracle(self.trace, self.fail, profile.history, durable_after(profile))
        self.network = SimNetwork(self.rng("network"), profile.network, self.trace, self.address_of)
        self._addresses: dict[str, tuple[str, int]] = {}
        self.disk = SimDisk(self.rng("disk"), profile.disk, self.trace)
        self.host = ServerHost(self, components)
        self.settling = trio.Event()  # faults have stopped: clients must now reach the head
        self.finishing = trio.Event()  # clients must now leave
        self.quiet = 0  # while above 0 (a quiet window, a lull before a restart) nobody sends
        # The log as the oracle reads it, read on from where it stopped while the disk only
        # grows (`SimDisk.rewrites` unchanged), else read again.
        self._logged: list[Record] = []
        self._logged_end = 0  # the offset where reading stopped
        self._logged_at = 0  # the disk's `version` then
        self._logged_rewrites = 0
        self.wall_jump_ms = 0  # how far the wall clock has jumped, in total

    def address_of(self, who: str) -> tuple[str, int] | None:
        """The address the server sees for client `who`: with `flood_groups`, flooders share
        that many addresses and every other client has one of its own; else none (unknown)."""
        groups = self.profile.flood_groups
        if not groups:
            return None
        if who.startswith("flood"):
            return (f"10.66.0.{int(who.removeprefix('flood')) % groups}", 40000)
        if who not in self._addresses:
            self._addresses[who] = (f"10.0.0.{len(self._addresses) + 1}", 40000)
        return self._addresses[who]

    def wall_clock_ms(self) -> int:
        """The server's wall clock for record timestamps: trio's (mock) clock plus the jumps
        the wall clock has made (`wall_jump_ms`), so it is part of the simulation."""
        return sim_clock_ms() + self.wall_jump_ms

    def logged(self) -> list[Record]:
        """The records on the disk (synced or not), as the oracle reads them (kept: the list
        only grows until the disk is cut short)."""
        disk = self.disk
        if self._logged_at != disk.version:
            if self._logged_rewrites != disk.rewrites:  # not only grown: read it all again
                self._logged, self._logged_end = [], 0
                self._logged_rewrites = disk.rewrites
            self._logged_end = read_more(disk.data, self._logged, self._logged_end)
            self._logged_at = disk.version
        return self._logged

    def rng(self, name: str) -> random.Random:
        """An independent random stream for one part of the world, from the run's seed."""
        return random.Random(f"{self.seed}:{name}")

    def fail(self, invariant: str, detail: str) -> None:
        """Record the first broken invariant and stop the run."""
        if self.failure is None:
            self.failure = Failure(
                invariant, detail, self._clock.current_time(), self.counter.steps
            )
            self.trace.record("failure", invariant=invariant, detail=detail)
            self._cancel_run()


class ServerHost:
    """Starts, crashes and gracefully restarts the real server."""

    def __init__(self, world: World, components: Components) -> None:
        self._world = world
        self._components = components
        self.room: Room | None = None
        self.server: ChatServer | None = None
        self._scope: trio.CancelScope | None = None
        self._exited = trio.Event()
        self._served = 0.0  # when the last `serve` returned
        self._sync_failures = 0  # the disk's count of failed fsyncs when this life began
        self.lives = 0
        self.ports = (TCP_PORT, HTTP_PORT)  # where it listens (TCP dialects, HTTP)

    @property
    def up(self) -> bool:
        """Whether a server is running."""
        return self._scope is not None

    @property
    def head(self) -> int:
        """The running log's visible head (0 while down)."""
        return self.room.log.head if self.room is not None else 0

    async def start(self, nursery: trio.Nursery) -> None:
        """Open the log from the disk (recovering it) and serve; returns once accepting."""
        world, profile = self._world, self._world.profile
        log = await self._open()
        components = self._components
        self.room = components.room_class(
            log, KEY, world.settings, session_class=components.session_class
        )
        self.server = components.server_class(
            self.room,
            shutdown_deadline=profile.shutdown_deadline,
            web=world.web,
            admission=AdmissionSettings(
                max_connections=64,
                max_handshakes=profile.max_handshakes,
                pressure_auth_timeout=profile.pressure_auth_timeout,
            ),
        )
        self._exited = trio.Event()
        self._scope = await nursery.start(self._serve, log, self.server)
        self.lives += 1

    async def _open(self) -> LogStore:
        """Open the file log on the simulated disk, recovering it; a new epoch begins."""
        world, profile = self._world, self._world.profile
        while True:
            try:
                log, recovery = await self._components.log_class.open(
                    world.disk.open(),
                    clock_ms=world.wall_clock_ms,
                    fsync=profile.fsync,
                    cache_records=profile.cache_records,
                )
                break
            except (OSError, StorageFailed) as exc:
                # Recovery's own truncate or fsync failed (`ChatLog.open` reports a failed
                # tail repair as StorageFailed): the server cannot start; a supervisor would
                # start it again, so the simulation does too.
                world.trace.record("start_failed", error=str(exc))
                await trio.sleep(START_RETRY)
        world.oracle.begin_epoch(read_log(bytes(world.disk.data)))
        self._sync_failures = world.disk.sync_failures
        world.trace.record("start", records=recovery.records, cut=recovery.truncated_bytes)
        return log

    def _background(self, log: LogStore, nursery: trio.Nursery) -> None:
        """Start the log's own work next to the server: the file log's interval fsync."""
        if isinstance(log, ChatLog) and log.fsync is FsyncPolicy.INTERVAL:
            nursery.start_soon(log.run_interval_sync, self._world.profile.fsync_interval)

    async def _serve(
        self,
        log: LogStore,
        server: ChatServer,
        *,
        task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    self._background(log, nursery)
                    async with trio.open_nursery() as serving:
                        network = self._world.network
                        tcp, http = (network.listen(port) for port in self.ports)
                        await serving.start(server.serve, [tcp], [http])
                        task_status.started(scope)
                    self._served = trio.current_time()
                    await log.aclose()
                    nursery.cancel_scope.cancel()
        finally:
            self._scope = None
            self._exited.set()

    def crash(self) -> None:
        """Power cut: lose unsynced bytes, reset every connection, kill the server's tasks."""
        assert self._scope is not None, "no server to crash"
        world = self._world
        world.oracle.power_cut(world.disk.sync_failures > self._sync_failures)
        world.oracle.end_epoch(bytes(world.disk.data))
        world.disk.power_cut()
        world.network.reset_all()
        self._scope.cancel()
        self.room = None

    async def wait_stopped(self) -> None:
        """Block until the server's tasks are all gone."""
        await self._exited.wait()

    async def shutdown(self) -> None:
        """The real graceful shutdown; fails the run if it overruns its deadline."""
        assert self.room is not None
        world, log, disk = self._world, self.room.log, self._world.disk
        await self._graceful(world.clients)
        # Whatever the fsync policy, a graceful stop syncs everything written
        # (docs/log-format.md), unless an fsync failed and the log refused to go on.
        if log.broken is None and disk.synced < len(disk.data):
            unsynced = len(disk.data) - disk.synced
            world.fail(DURABLE, f"graceful shutdown left {unsynced} bytes not synced")
        world.oracle.end_epoch(bytes(world.disk.data))
        self.room = None

    async def _graceful(self, clients: list[Client]) -> None:
        """Stop the server gracefully (its `clients` are owed the shutdown notice) and check
        it met its deadline."""
        assert self.server is not None and self._scope is not None, "no server to stop"
        world = self._world
        for client in clients:
            client.expect_notice(self.head)
        started = trio.current_time()
        self.server.shutdown()
        await self._exited.wait()
        took = self._served - started
        world.trace.record("shutdown", seconds=round(took, 6))
        if took > world.profile.shutdown_deadline + SHUTDOWN_SLACK:
            world.fail(SHUTDOWN_DEADLINE, f"graceful shutdown took {took:.3f}s")
