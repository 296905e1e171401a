"""One simulated run: the director's script around the actors, and its result.

The director starts the server, the actors and the fault injectors; after the profile's
duration it stops every fault, heals the network and makes sure a healthy server is up, then
gives the clients `settle_bound` simulated seconds to reach the log's head. Finally the clients
leave, the director checks that every session's tasks are gone, shuts the server down
gracefully and checks the log on disk one last time.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import trio

from papaya_trio.server import ChatServer
from sim.actors import (
    GarbageClient,
    NativeClient,
    PapayaClient,
    SilentClient,
    flood_actor,
    garbage_actor,
    native_actor,
    papaya_actor,
    silent_actor,
    slow_actor,
)
from sim.clock import JumpClock
from sim.entropy import seeded_websocket_entropy
from sim.instrument import TaskCounter
from sim.invariants import LIVELOCK, LIVENESS, NO_CRASH, RUN_ENDS, TASKS_GONE, Failure
from sim.presence import presence_converges
from sim.profiles import Profile, profile_for
from sim.scheduler import seeded_scheduling, sparse_io_polls
from sim.script import Op, run_script
from sim.world import Components, World
from sim.wsclient import WsClient, WsGarbageClient

LEAVE_BOUND = 10.0  # simulated seconds for the server to notice every client has left
LULL = 0.5  # simulated seconds nobody sends before a graceful restart in a lull
QUIET_SETTLE = 1.0  # simulated seconds of a quiet window before the head is noted, and after
RUN_SLACK = 120.0  # simulated seconds a run may take past its traffic and settling phases
# Tasks of one connection (a session, a handler, trio-websocket's reader, the keepalive).
SESSION_TASKS = ("Session", "ChatServer._handle", "WebSocketConnection._reader_task", "_keep_alive")


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one seed did."""

    seed: int
    profile: str
    failure: Failure | None
    digest: str
    sim_seconds: float
    wall_seconds: float
    events: int
    delivered: int
    server_lives: int

    def replay_command(self) -> str:
        """The shell command that runs this seed again."""
        return f"python -m sim --seed {self.seed} --profile {self.profile}"

    def report(self, trace_path: Path | None) -> str:
        """One line: the failure (or success), the replay command and the trace file."""
        if self.failure is None:
            return (
                f"ok seed={self.seed} profile={self.profile} t={self.sim_seconds:.1f}s "
                f"delivered={self.delivered} digest={self.digest[:16]}"
            )
        f = self.failure
        where = f" trace: {trace_path}" if trace_path else ""
        return (
            f"FAIL seed={self.seed} profile={self.profile} invariant={f.invariant} "
            f"t={f.time:.6f}s step={f.step}: {f.detail} | replay: {self.replay_command()} |{where}"
        )


@contextmanager
def _server_log_into(world: World) -> Iterator[None]:
    """Send the server's log lines to the trace (and nowhere else) during the run."""

    class ToTrace(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            world.trace.record("log", level=record.levelname, message=record.getMessage())

    logger = logging.getLogger("papaya_trio")
    handler = ToTrace(logging.INFO)
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


async def _director(world: World, ops: list[Op] | None) -> None:
    profile, host = world.profile, world.host
    async with trio.open_nursery() as nursery:
        await host.start(nursery)
        async with trio.open_nursery() as actors:
            async with trio.open_nursery() as chaos:
                chaos.start_soon(world.network.run_faults)
                chaos.start_soon(world.network.run_fd_exhaustion, world.rng("descriptors"))
                if profile.network.partition_every:  # a task more would change the schedule
                    chaos.start_soon(world.network.run_partitions, world.rng("partitions"))
                chaos.start_soon(_clock_jumps, world)
                chaos.start_soon(_restarts, world, nursery)
                chaos.start_soon(_quiet_windows, world)
                if ops is None:
                    _start_actors(world, actors)
                    await trio.sleep(profile.duration)
                else:
                    await run_script(world, ops, nursery, actors)
                chaos.cancel_scope.cancel()
            await _settle(world, nursery)
            world.finishing.set()
        assert host.server is not None
        await check_left(world, [host.server])
        await host.shutdown()
        nursery.cancel_scope.cancel()


def _start_actors(world: World, actors: trio.Nursery) -> None:
    profile = world.profile
    for n in range(profile.chatters):
        actors.start_soon(
            native_actor, NativeClient(world, f"chat{n}", world.rng(f"chat{n}")), True
        )
    for n in range(profile.lurkers):
        actors.start_soon(
            native_actor, NativeClient(world, f"lurk{n}", world.rng(f"lurk{n}")), False
        )
    for n in range(profile.slow_readers):
        name = f"slow{n}"
        actors.start_soon(slow_actor, NativeClient(world, name, world.rng(name), slow=True))
    for n in range(profile.garbage_senders):
        actors.start_soon(garbage_actor, GarbageClient(world, f"junk{n}", world.rng(f"junk{n}")))
    for n in range(profile.papaya_clients):
        actors.start_soon(papaya_actor, PapayaClient(world, f"papa{n}", world.rng(f"papa{n}")))
    for n in range(profile.ws_clients):
        actors.start_soon(native_actor, WsClient(world, f"ws{n}", world.rng(f"ws{n}")), True)
    for n in range(profile.ws_garbage_senders):
        name = f"wsjunk{n}"
        actors.start_soon(garbage_actor, WsGarbageClient(world, name, world.rng(name)))
    for n in range(profile.idlers):
        name = f"idle{n}"
        actors.start_soon(silent_actor, SilentClient(world, name, world.rng(name)))
    for n in range(profile.flooders):
        name = f"flood{n}"
        actors.start_soon(flood_actor, world, name, world.rng(name))


async def _restarts(world: World, nursery: trio.Nursery) -> None:
    """Crash or gracefully restart the server at the profile's rates."""
    profile, rng, host = world.profile, world.rng("restarts"), world.host
    rates = [1.0 / every for every in (profile.crash_every, profile.shutdown_every) if every]
    if not rates:
        return
    while True:
        await trio.sleep(rng.expovariate(sum(rates)))
        crash_rate = 1.0 / profile.crash_every if profile.crash_every else 0.0
        crash = rng.random() * sum(rates) < crash_rate
        if crash and rng.random() < profile.commit_kills:
            # SIGKILL between the write and the fsync of late writers in a group commit; if
            # no such fsync comes (no traffic, or a log that refuses appends after a failed
            # fsync and waits for a restart), the crash comes anyway.
            with trio.move_on_after(profile.crash_every):
                await world.disk.wait_commit_window()
        # Once begun, a restart completes even if the traffic phase ends meanwhile.
        with trio.CancelScope(shield=True):
            if crash:
                world.trace.record("crash")
                host.crash()
                await host.wait_stopped()
            else:
                # Half the graceful restarts come in a lull, when nothing else would wake a
                # session: the shutdown notice must not wait for the next message.
                lull = rng.random() < 0.5
                world.quiet += lull
                try:
                    await trio.sleep(LULL if lull else 0.0)
                    await host.shutdown()
                finally:
                    world.quiet -= lull
            await trio.sleep(rng.uniform(0.0, 3.0))
            await host.start(nursery)


async def _clock_jumps(world: World) -> None:
    """The wall clock that stamps records jumps, forward or back, by up to an hour (NTP, a
    suspended VM): nothing about sequence numbers, order or delivery may change."""
    rng, every = world.rng("wall clock"), world.profile.clock_jump_every
    if not every:
        return
    while True:
        await trio.sleep(rng.expovariate(1.0 / every))
        jump = rng.choice((-1, 1)) * rng.randint(1, 3_600_000)
        world.wall_jump_ms += jump
        world.trace.record("clock_jump", ms=jump)


async def _quiet_windows(world: World) -> None:
    """Now and then nobody sends for a while: every client that has seen no fault must then
    reach the head (a lost wake-up leaves a client behind until somebody writes again)."""
    rng = world.rng("quiet")
    if not world.profile.quiet_every:
        return
    while True:
        await trio.sleep(rng.expovariate(1.0 / world.profile.quiet_every))
        world.quiet += 1
        try:
            await trio.sleep(QUIET_SETTLE)
            head, noted_at = world.host.head, trio.current_time()
            await trio.sleep(QUIET_SETTLE)
            late = [c.user for c in world.clients if c.behind(head, noted_at)]
            if late:
                world.fail(
                    LIVENESS, f"quiet for {2 * QUIET_SETTLE}s, still short of {head}: {late}"
                )
        finally:
            world.quiet -= 1


async def _settle(world: World, nursery: trio.Nursery) -> None:
    """Faults stop; every connected client must reach the head within the bound."""
    host = world.host
    world.disk.faults = replace(world.disk.faults, write_failure=0.0, sync_failure=0.0)
    world.network.heal()
    if host.up and host.room is not None and host.room.log.broken:
        await host.shutdown()  # a log that refused appends needs a restart, as in production
    if not host.up:
        await host.start(nursery)
    world.settling.set()
    world.trace.record("settling", head=host.head)
    clients = [c for c in world.clients if c.settles]
    deadline = trio.current_time() + world.profile.settle_bound
    while trio.current_time() < deadline:
        # The server's head must also be the log's end (as the oracle reads the disk).
        if host.head == len(world.logged()) and all(c.settled() for c in clients):
            world.trace.record("settled", head=host.head)
            await presence_converges(world)
            return
        await trio.sleep(0.1)
    behind = [c.user for c in clients if not c.settled()]
    world.fail(
        LIVENESS,
        f"head {host.head} (the log holds {len(world.logged())}); not there after the bound: "
        f"{', '.join(behind)}",
    )


async def check_left(world: World, servers: list[ChatServer]) -> None:
    """Every client has left; the servers must end all their sessions and tasks."""
    with trio.move_on_after(LEAVE_BOUND):
        # Polled: the server offers no public event for "no connections" (simulated time).
        while any(server.connections for server in servers):  # noqa: ASYNC110
            await trio.sleep(0.05)
    left = world.counter.server_tasks()
    session_tasks = {n: c for n, c in left.items() if any(p in n for p in SESSION_TASKS)}
    connections = sum(server.connections for server in servers)
    if connections or session_tasks:
        world.fail(TASKS_GONE, f"{connections} connections, tasks {session_tasks}")


def run_seed(
    seed: int,
    profile_name: str = "smoke",
    *,
    components: Components | None = None,
    profile: Profile | None = None,
    ops: list[Op] | None = None,
) -> tuple[RunResult, World]:
    """Run one seed to the end (or its first failure); with `ops`, play that script instead
    of the profile's actors (the profile still sets the faults)."""
    chosen = profile or profile_for(profile_name, seed)

    def runaway(second: int, steps: int) -> None:
        world.fail(LIVELOCK, f"{steps} scheduler steps within simulated second {second}")

    counter = TaskCounter(runaway)
    clock = JumpClock()
    scope = trio.CancelScope()
    parts = components or Components()
    if chosen.shared_store is not None:
        # Several hosts on one stream store; that module builds on this one.
        from sim import sharedstore

        shared = sharedstore.SharedWorld(seed, chosen, parts, clock, counter, scope.cancel)
        world: World = shared
        direct: Callable[[], Awaitable[None]] = partial(sharedstore.direct, shared)
    else:
        world = World(seed, chosen, parts, clock, counter, scope.cancel)
        direct = partial(_director, world, ops)

    async def main() -> None:
        with scope, _server_log_into(world):
            limit = chosen.duration + chosen.settle_bound + RUN_SLACK
            with trio.move_on_after(limit) as overrun:
                await direct()
            if overrun.cancelled_caught:
                world.fail(RUN_ENDS, f"the run did not end within {limit:.0f} simulated seconds")

    started = time.perf_counter()
    try:
        with (
            seeded_scheduling(seed, counter.pace) as counter.order,
            sparse_io_polls(),
            seeded_websocket_entropy(world.rng("wsproto")),
        ):
            trio.run(main, clock=clock, instruments=[counter])
    except Exception as exc:  # a crash of the server or of the harness is a failure too
        world.trace.record("exception", error=format_exception(exc))
        leaf: BaseException = exc
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        world.fail(NO_CRASH, f"{type(leaf).__name__}: {leaf}")
    result = RunResult(
        seed=seed,
        profile=chosen.name,
        failure=world.failure,
        digest=world.trace.digest,
        sim_seconds=clock.current_time(),
        wall_seconds=time.perf_counter() - started,
        events=world.trace.count,
        delivered=world.oracle.delivered,
        server_lives=world.host.lives,
    )
    return result, world


def format_exception(exc: BaseException) -> str:
    """The traceback, as one string (exception groups included)."""
    return "".join(traceback.format_exception(exc)).rstrip()
