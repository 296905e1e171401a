"""The sweep: every mode at every connection count, interleaved and repeated.

For each connection count N and each repeat, the modes run one after the other, in an
order rotated by the repeat number, so a machine that drifts (thermal, other jobs) affects
all modes alike. One trial:

1. start the server in its own process group, pinned to the server CPU;
2. start the load generator (another process) pinned to the remaining CPUs, and wait for
   its "ready" line (all N connections open);
3. let `warmup` seconds pass (forks, first-touch memory), then take a snapshot every
   `interval` seconds for `duration` seconds;
4. read the generator's result and stop the server's process group.

Everything waits under a deadline, so a server that never announces its port or a
generator that hangs ends the trial with an error instead of the sweep hanging.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field

import trio

from papaya_trio.bench import stats
from papaya_trio.bench.loadgen import DEFAULT_RATE_BITS, DEFAULT_TICK, LoadResult
from papaya_trio.bench.sampler import Interval, ProcessTreeSampler, Snapshot, interval
from papaya_trio.bench.servers import ServerSpec, free_port
from papaya_trio.bench.sink_common import parse_announcement

DEFAULT_CONNECTIONS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_DURATION = 60.0
DEFAULT_WARMUP = 2.0
DEFAULT_INTERVAL = 0.5
#: Longest wait for a server to listen, or for the generator to connect or finish.
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
#: A trial is flagged when other work used more than this on the server's CPU.
BACKGROUND_LIMIT = 5.0
_MAX_LINE = 1 << 20


class BenchError(Exception):
    """A trial could not be run (a server did not start, the generator failed...)."""


@dataclass(frozen=True)
class Placement:
    """Which CPUs the server and the load generator (with the runner) may use."""

    server_cpus: frozenset[int]
    load_cpus: frozenset[int]

    @property
    def pinned(self) -> bool:
        """Whether server and load run on separate CPUs."""
        return not self.server_cpus & self.load_cpus

    @classmethod
    def choose(cls, available: Sequence[int], pin: bool = True) -> Placement:
        """The server on the first CPU, the rest for the load; no pinning on one CPU."""
        cpus = sorted(available)
        if pin and len(cpus) >= 2:
            return cls(frozenset(cpus[:1]), frozenset(cpus[1:]))
        return cls(frozenset(cpus), frozenset(cpus))


@dataclass(frozen=True)
class SweepConfig:
    """What to run."""

    servers: tuple[ServerSpec, ...]
    connections: tuple[int, ...] = DEFAULT_CONNECTIONS
    duration: float = DEFAULT_DURATION
    warmup: float = DEFAULT_WARMUP
    interval: float = DEFAULT_INTERVAL
    repeat: int = 1
    rate_bits: float = DEFAULT_RATE_BITS
    tick: float = DEFAULT_TICK
    pin: bool = True

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("no server to measure")
        if len({s.name for s in self.servers}) != len(self.servers):
            raise ValueError("two servers have the same name")
        if not self.connections or min(self.connections) < 1:
            raise ValueError("connection counts must be positive")
        if self.repeat < 1:
            raise ValueError("repeat must be at least 1")
        if self.duration < 2 * self.interval:
            raise ValueError("duration must cover at least two sampling intervals")
        if self.warmup < 0:
            raise ValueError("warm-up can't be negative")


@dataclass(frozen=True)
class Trial:
    """One run of one mode at one connection count."""

    mode: str
    connections: int
    repeat: int
    #: CPU % of one core in each sampling interval.
    samples: list[float]
    cpu_percent: float
    cv: float
    voluntary_per_second: float
    involuntary_per_second: float
    rss_bytes: int
    pss_bytes: int
    processes: int
    background_percent: float
    load: dict[str, object]
    flagged: bool
    flag_reason: str


@dataclass(frozen=True)
class Point:
    """All repeats of one mode at one connection count, aggregated."""

    mode: str
    connections: int
    repeats: int
    #: Mean over repeats of each trial's mean CPU %, and the spread of those means.
    cpu_percent: float
    cpu_percent_min: float
    cpu_percent_max: float
    #: Mean over repeats of each trial's Cv, and the largest.
    cv: float
    cv_max: float
    voluntary_per_second: float
    involuntary_per_second: float
    rss_bytes: int
    pss_bytes: int
    background_percent: float
    load_cpu_percent: float
    achieved_rate_bits: float
    flagged: bool


@dataclass
class SweepResult:
    """Everything a sweep measured, with the conditions it ran under."""

    profile: str
    config: dict[str, object]
    placement: dict[str, list[int]]
    trials: list[Trial] = field(default_factory=list)

    def points(self) -> list[Point]:
        """Trials aggregated per (mode, connections), in sweep order."""
        groups: dict[tuple[str, int], list[Trial]] = {}
        for trial in self.trials:
            groups.setdefault((trial.mode, trial.connections), []).append(trial)
        return [aggregate(group) for group in groups.values()]

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict: conditions, every trial and the aggregated points."""
        return {
            "profile": self.profile,
            "config": self.config,
            "placement": self.placement,
            "trials": [asdict(t) for t in self.trials],
            "points": [asdict(p) for p in self.points()],
        }


def aggregate(trials: Sequence[Trial]) -> Point:
    """Aggregate the repeats of one mode at one connection count."""
    means = [t.cpu_percent for t in trials]
    cvs = [t.cv for t in trials]
    return Point(
        mode=trials[0].mode,
        connections=trials[0].connections,
        repeats=len(trials),
        cpu_percent=stats.mean(means),
        cpu_percent_min=min(means),
        cpu_percent_max=max(means),
        cv=stats.mean(cvs),
        cv_max=max(cvs),
        voluntary_per_second=stats.mean([t.voluntary_per_second for t in trials]),
        involuntary_per_second=stats.mean([t.involuntary_per_second for t in trials]),
        rss_bytes=max(t.rss_bytes for t in trials),
        pss_bytes=max(t.pss_bytes for t in trials),
        background_percent=stats.mean([t.background_percent for t in trials]),
        load_cpu_percent=stats.mean([_as_float(t.load.get("cpu_percent")) for t in trials]),
        achieved_rate_bits=stats.mean([_as_float(t.load.get("mean_rate_bits")) for t in trials]),
        flagged=any(t.flagged for t in trials),
    )


def _as_float(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def summarise(
    spec: ServerSpec,
    connections: int,
    repeat: int,
    intervals: Sequence[Interval],
    load: LoadResult,
) -> Trial:
    """Turn one trial's sampling intervals and the generator's result into a `Trial`."""
    samples = [i.cpu_percent for i in intervals]
    cpu = stats.mean(samples)
    background = stats.mean([i.background_percent for i in intervals])
    reasons = [load.flag_reason] if load.flagged else []
    if background > BACKGROUND_LIMIT:
        reasons.append(f"other work used {background:.1f}% of the server CPU")
    last = intervals[-1]
    return Trial(
        mode=spec.name,
        connections=connections,
        repeat=repeat,
        samples=samples,
        cpu_percent=cpu,
        cv=stats.coefficient_of_variation(samples) if cpu > 0 else 0.0,
        voluntary_per_second=stats.mean([i.voluntary_per_second for i in intervals]),
        involuntary_per_second=stats.mean([i.involuntary_per_second for i in intervals]),
        rss_bytes=last.rss_bytes,
        pss_bytes=last.pss_bytes,
        processes=last.processes,
        background_percent=background,
        load=load.to_json(),
        flagged=bool(reasons),
        flag_reason="; ".join(reasons),
    )


async def _read_line(stream: trio.abc.ReceiveStream, deadline: float) -> str:
    """One line from a pipe, under a deadline and a length bound."""
    data = bytearray()
    with trio.move_on_at(deadline):
        while b"\n" not in data and len(data) < _MAX_LINE:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
    line, _, _ = bytes(data).partition(b"\n")
    return line.decode(errors="replace")


async def _wait_connectable(port: int, deadline: float) -> None:
    # Polling is the only readiness signal an arbitrary external server gives us.
    while trio.current_time() < deadline:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            await trio.sleep(0.05)
            continue
        await stream.aclose()
        return
    raise BenchError(f"nothing listens on port {port} after {STARTUP_TIMEOUT:.0f} s")


def _signal_group(process: trio.Process, signum: int) -> None:
    # The server is a session leader (start_new_session), so its pid is its group id; the
    # group holds the server and any children it forked, and nothing else.
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        return


@asynccontextmanager
async def running_server(spec: ServerSpec, cpus: frozenset[int]) -> AsyncIterator[tuple[int, int]]:
    """Start `spec` pinned to `cpus`; yield (pid, port); stop its whole process group."""
    port = 0 if spec.announces_port else free_port()
    process = await trio.lowlevel.open_process(
        spec.argv(port),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if spec.announces_port else subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        os.sched_setaffinity(process.pid, cpus)
        deadline = trio.current_time() + STARTUP_TIMEOUT
        if spec.announces_port:
            assert process.stderr is not None
            line = await _read_line(process.stderr, deadline)
            try:
                port = parse_announcement(line)
            except ValueError:
                raise BenchError(f"{spec.name} did not start: {line!r}") from None
        else:
            await _wait_connectable(port, deadline)
        yield process.pid, port
    finally:
        _signal_group(process, signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT) as scope:
            scope.shield = True
            await process.wait()
        if scope.cancelled_caught:
            _signal_group(process, signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await process.wait()
        if process.stderr is not None:
            await process.stderr.aclose()


async def run_trial(
    spec: ServerSpec,
    connections: int,
    repeat: int,
    config: SweepConfig,
    placement: Placement,
) -> Trial:
    """Run one mode at one connection count and summarise it."""
    tail = 2 * config.interval
    load_seconds = config.warmup + config.duration + tail
    async with running_server(spec, placement.server_cpus) as (pid, port):
        sampler = ProcessTreeSampler(pid, placement.server_cpus)
        argv = [
            sys.executable,
            "-m",
            "papaya_trio.bench.loadgen",
            f"--port={port}",
            f"--connections={connections}",
            f"--duration={load_seconds}",
            f"--rate-bits={config.rate_bits}",
            f"--tick={config.tick}",
        ]
        load = await trio.lowlevel.open_process(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        try:
            os.sched_setaffinity(load.pid, placement.load_cpus)
            assert load.stdout is not None
            ready = await _read_line(load.stdout, trio.current_time() + STARTUP_TIMEOUT)
            if json.loads(ready or "{}").get("event") != "ready":
                raise BenchError(f"load generator did not start: {ready!r}")
            snapshots = await _sample(sampler, trio.current_time() + config.warmup, config)
            done = trio.current_time() + load_seconds + STARTUP_TIMEOUT
            line = await _read_line(load.stdout, done)
            result = json.loads(line or "{}")
            if result.pop("event", None) != "result":
                raise BenchError(f"load generator gave no result: {line!r}")
            load_result = LoadResult.from_json(result)
        finally:
            with trio.move_on_after(STOP_TIMEOUT) as scope:
                scope.shield = True
                await load.wait()
            if scope.cancelled_caught:
                load.kill()
                with trio.CancelScope(shield=True):
                    await load.wait()
            if load.stdout is not None:
                await load.stdout.aclose()
    intervals = [interval(a, b) for a, b in itertools.pairwise(snapshots)]
    return summarise(spec, connections, repeat, intervals, load_result)


async def _sample(sampler: ProcessTreeSampler, start: float, config: SweepConfig) -> list[Snapshot]:
    count = round(config.duration / config.interval) + 1
    snapshots = []
    for k in range(count):
        await trio.sleep_until(start + k * config.interval)
        snapshots.append(sampler.snapshot(trio.current_time()))
    return snapshots


def trial_order(config: SweepConfig) -> list[tuple[int, int, ServerSpec]]:
    """(connections, repeat, server) in run order: modes rotated on every repeat."""
    order = []
    servers = list(config.servers)
    for connections in config.connections:
        for repeat in range(config.repeat):
            shift = repeat % len(servers)
            for spec in servers[shift:] + servers[:shift]:
                order.append((connections, repeat, spec))
    return order


async def run_sweep(
    config: SweepConfig,
    profile: str,
    on_start: Callable[[str], None] | None = None,
    on_finish: Callable[[str, Trial], None] | None = None,
) -> SweepResult:
    """Run every trial of `config`; the runner itself moves to the load CPUs meanwhile."""
    placement = Placement.choose(sorted(os.sched_getaffinity(0)), pin=config.pin)
    result = SweepResult(
        profile=profile,
        config={
            **{k: v for k, v in asdict(config).items() if k != "servers"},
            "servers": [{"name": s.name, "command": list(s.command)} for s in config.servers],
        },
        placement={
            "server_cpus": sorted(placement.server_cpus),
            "load_cpus": sorted(placement.load_cpus),
        },
    )
    own_cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, placement.load_cpus)
    try:
        for connections, repeat, spec in trial_order(config):
            label = f"N={connections} {spec.name} repeat {repeat + 1}/{config.repeat}"
            if on_start:
                on_start(label)
            trial = await run_trial(spec, connections, repeat, config, placement)
            result.trials.append(trial)
            if on_finish:
                on_finish(label, trial)
    finally:
        os.sched_setaffinity(0, own_cpus)
    return result
