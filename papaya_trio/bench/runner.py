"""The sweep: every mode at every connection count, interleaved and repeated.

The same for every profile; the profile's `Workload` says which generator to run and what
its result means. For each connection count N and each repeat, the modes run one after the
other, in an order rotated by the repeat number, so a machine that drifts (thermal, other
jobs) affects all modes alike. One trial, in a fresh temporary folder:

1. let the workload prepare the room folder, then start the server in its own process
   group, pinned to the server CPU, its stderr in ``server.log``; take a baseline memory
   reading once it listens;
2. start the load generator (another process) pinned to the remaining CPUs, and wait for
   its "ready" line (all N connections open);
3. let `warmup` seconds pass (forks, first-touch memory), then take a snapshot every
   `interval` seconds for `duration` seconds (memory in the last one only: reading it for
   thousands of forked processes takes longer than an interval);
4. read the generator's result and stop the server's process group.

Everything waits under a deadline, so a server that never announces its port or a
generator that hangs ends the trial with an error instead of the sweep hanging. A trial
that fails is recorded with its reason, and that mode is not tried at larger N: the largest
N a mode ran is part of the result.

Before the modes of each N and repeat, a host check (`steadiness`) measures how steady the
server CPU itself is just then; its Cv goes into each of those trials' figures as
``host_cv``, the floor their own Cv is to be read against.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trio

from papaya_trio.bench import stats
from papaya_trio.bench.sampler import Interval, ProcessTreeSampler, Snapshot, interval
from papaya_trio.bench.servers import ServerSpec, free_port
from papaya_trio.bench.steadiness import HOST_CV, HostCheck, check_host
from papaya_trio.bench.workloads import Reducer, SweepConfig, Workload, ready_timeout

#: Longest wait for a server to listen, or for the generator to connect or finish.
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
#: A trial is flagged when other work used more than this on the server's CPU.
BACKGROUND_LIMIT = 5.0
_MAX_LINE = 1 << 20
#: How often the server's log is read while waiting for its port announcement.
_ANNOUNCEMENT_POLL = 0.02
#: How much of the server's log an error message quotes.
_LOG_TAIL = 2000
SERVER_LOG = "server.log"


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
    #: Memory growth of the tree from before the load connected, per connection.
    rss_per_connection_bytes: float
    pss_per_connection_bytes: float
    processes: int
    background_percent: float
    #: The generator's JSON result, and the profile's figures (see `workloads`).
    load: dict[str, object]
    figures: dict[str, float]
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
    rss_per_connection_bytes: float
    pss_per_connection_bytes: float
    background_percent: float
    flagged: bool
    #: The profile's figures, each aggregated with its workload reducer.
    figures: dict[str, float] = field(default_factory=dict)


@dataclass
class SweepResult:
    """Everything a sweep measured, with the conditions it ran under."""

    profile: str
    config: dict[str, object]
    placement: dict[str, list[int]]
    reducers: Mapping[str, Reducer]
    trials: list[Trial] = field(default_factory=list)
    #: Trials that could not be run: mode, connections, repeat and reason.
    failures: list[dict[str, object]] = field(default_factory=list)
    host_checks: list[HostCheck] = field(default_factory=list)

    def points(self) -> list[Point]:
        """Trials aggregated per (mode, connections), in sweep order."""
        groups: dict[tuple[str, int], list[Trial]] = {}
        for trial in self.trials:
            groups.setdefault((trial.mode, trial.connections), []).append(trial)
        return [aggregate(group, self.reducers) for group in groups.values()]

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict: conditions, every trial, the failures and the points."""
        return {
            "profile": self.profile,
            "config": self.config,
            "placement": self.placement,
            "trials": [asdict(t) for t in self.trials],
            "failures": self.failures,
            "host_checks": [asdict(c) for c in self.host_checks],
            "points": [asdict(p) for p in self.points()],
        }


def aggregate(trials: Sequence[Trial], reducers: Mapping[str, Reducer]) -> Point:
    """Aggregate the repeats of one mode at one connection count.

    Each figure is reduced over the trials that have it (an idle room has no latency).
    """
    figures: dict[str, float] = {}
    for name, reduce in reducers.items():
        values = [t.figures[name] for t in trials if name in t.figures]
        if values:
            figures[name] = reduce(values)
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
        rss_per_connection_bytes=stats.mean([t.rss_per_connection_bytes for t in trials]),
        pss_per_connection_bytes=stats.mean([t.pss_per_connection_bytes for t in trials]),
        background_percent=stats.mean([t.background_percent for t in trials]),
        flagged=any(t.flagged for t in trials),
        figures=figures,
    )


@dataclass(frozen=True)
class TrialRun:
    """What one trial measured, before it is summarised."""

    spec: ServerSpec
    connections: int
    repeat: int
    #: Memory of the server before the load connected.
    baseline: Snapshot
    intervals: Sequence[Interval]
    #: The generator's JSON result (without its "event" key).
    load: dict[str, object]


def summarise(run: TrialRun, workload: Workload) -> Trial:
    """Turn one trial's sampling intervals and the generator's result into a `Trial`."""
    samples = [i.cpu_percent for i in run.intervals]
    cpu = stats.mean(samples)
    background = stats.mean([i.background_percent for i in run.intervals])
    reasons = [str(run.load.get("flag_reason"))] if run.load.get("flagged") else []
    if background > BACKGROUND_LIMIT:
        reasons.append(f"other work used {background:.1f}% of the server CPU")
    last = run.intervals[-1]
    base_rss = sum(r.rss_bytes for r in run.baseline.processes.values())
    base_pss = sum(r.pss_bytes for r in run.baseline.processes.values())
    return Trial(
        mode=run.spec.name,
        connections=run.connections,
        repeat=run.repeat,
        samples=samples,
        cpu_percent=cpu,
        cv=stats.coefficient_of_variation(samples) if cpu > 0 else 0.0,
        voluntary_per_second=stats.mean([i.voluntary_per_second for i in run.intervals]),
        involuntary_per_second=stats.mean([i.involuntary_per_second for i in run.intervals]),
        rss_bytes=last.rss_bytes,
        pss_bytes=last.pss_bytes,
        rss_per_connection_bytes=(last.rss_bytes - base_rss) / run.connections,
        pss_per_connection_bytes=(last.pss_bytes - base_pss) / run.connections,
        processes=last.processes,
        background_percent=background,
        load=run.load,
        figures=workload.figures(run.load, cpu),
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


def _log_tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-_LOG_TAIL:]
    except OSError:
        return ""


async def _wait_announced(
    process: trio.Process, pattern: str, log_path: Path, deadline: float
) -> int:
    """The port the server announces in its log; BenchError if it exits or takes too long."""
    # The log is a file, not a pipe: a server that logs every connection never blocks on it.
    announcement = re.compile(pattern)
    while trio.current_time() < deadline and process.returncode is None:
        if match := announcement.search(_log_tail(log_path)):
            return int(match.group(1))
        await trio.sleep(_ANNOUNCEMENT_POLL)
    raise BenchError(f"the server did not start listening: {_log_tail(log_path)!r}")


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


async def _stop(process: trio.Process, stop: Callable[[], None], kill: Callable[[], None]) -> None:
    """Ask a process to stop, give it STOP_TIMEOUT, then kill it; shielded from cancellation."""
    stop()
    with trio.move_on_after(STOP_TIMEOUT) as scope:
        scope.shield = True
        await process.wait()
    if scope.cancelled_caught:
        kill()
        with trio.CancelScope(shield=True):
            await process.wait()


@asynccontextmanager
async def running_server(
    spec: ServerSpec, cpus: frozenset[int], workdir: Path
) -> AsyncIterator[tuple[int, int]]:
    """Start `spec` pinned to `cpus`, its room in ``workdir/data`` and its log in
    ``workdir/server.log``; yield (pid, port); stop its whole process group."""
    port = 0 if spec.announcement else free_port()
    log_path = workdir / SERVER_LOG
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            spec.argv(port, workdir / "data"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    try:
        os.sched_setaffinity(process.pid, cpus)
        deadline = trio.current_time() + STARTUP_TIMEOUT
        if spec.announcement:
            port = await _wait_announced(process, spec.announcement, log_path, deadline)
        else:
            await _wait_connectable(port, deadline)
        yield process.pid, port
    finally:
        await _stop(
            process,
            lambda: _signal_group(process, signal.SIGTERM),
            lambda: _signal_group(process, signal.SIGKILL),
        )


async def run_trial(
    spec: ServerSpec,
    connections: int,
    repeat: int,
    config: SweepConfig,
    placement: Placement,
) -> Trial:
    """Run one mode at one connection count, in a temporary folder, and summarise it."""
    with tempfile.TemporaryDirectory(prefix="papaya-bench-") as tmp:
        workdir = Path(tmp)
        config.workload.prepare(workdir / "data")
        async with running_server(spec, placement.server_cpus, workdir) as (pid, port):
            sampler = ProcessTreeSampler(pid, placement.server_cpus)
            baseline = sampler.snapshot(trio.current_time(), memory=True)
            argv = config.workload.generator_argv(
                port, connections, config.load_seconds, workdir / "data"
            )
            load = await trio.lowlevel.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
            )
            try:
                os.sched_setaffinity(load.pid, placement.load_cpus)
                snapshots, result = await _sample_during_load(load, sampler, connections, config)
            finally:
                await _stop(load, lambda: None, load.kill)
                if load.stdout is not None:
                    await load.stdout.aclose()
    intervals = [interval(a, b) for a, b in itertools.pairwise(snapshots)]
    run = TrialRun(spec, connections, repeat, baseline, intervals, result)
    return summarise(run, config.workload)


async def _sample_during_load(
    load: trio.Process, sampler: ProcessTreeSampler, connections: int, config: SweepConfig
) -> tuple[list[Snapshot], dict[str, object]]:
    """Wait for the generator's clients, sample the server, read the generator's result."""
    assert load.stdout is not None
    ready = await _read_line(load.stdout, trio.current_time() + ready_timeout(connections))
    event = json.loads(ready or "{}")
    if event.get("event") != "ready":
        raise BenchError(f"load generator did not start: {event.get('reason', ready)!r}")
    snapshots = await _sample(sampler, trio.current_time() + config.warmup, config)
    done = trio.current_time() + config.load_seconds + config.workload.drain + STARTUP_TIMEOUT
    line = await _read_line(load.stdout, done)
    result = json.loads(line or "{}")
    if result.pop("event", None) != "result":
        raise BenchError(f"load generator gave no result: {line!r}")
    return snapshots, result


async def _sample(sampler: ProcessTreeSampler, start: float, config: SweepConfig) -> list[Snapshot]:
    count = round(config.duration / config.interval) + 1
    snapshots = []
    for k in range(count):
        await trio.sleep_until(start + k * config.interval)
        last = k == count - 1
        snapshots.append(sampler.snapshot(trio.current_time(), memory=last))
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


def _checks(host: HostCheck | None, connections: int, repeat: int) -> bool:
    """Whether `host` is the host check of this N and repeat."""
    return host is not None and (host.connections, host.repeat) == (connections, repeat)


async def run_sweep(
    config: SweepConfig,
    on_start: Callable[[str], None] | None = None,
    on_finish: Callable[[str, Trial], None] | None = None,
    on_fail: Callable[[str, str], None] | None = None,
) -> SweepResult:
    """Run every trial of `config`; the runner itself moves to the load CPUs meanwhile.

    A trial that fails (BenchError) is recorded in `failures`, and its mode is skipped for
    the rest of the sweep (larger N).
    """
    placement = Placement.choose(sorted(os.sched_getaffinity(0)), pin=config.pin)
    workload = config.workload
    settings = asdict(config)  # the workload, a dataclass too, becomes a dict here
    result = SweepResult(
        profile=workload.profile,
        config={
            **{k: v for k, v in settings.items() if k not in ("servers", "workload")},
            "workload": {"profile": workload.profile, **settings["workload"]},
            "servers": [{"name": s.name, "command": list(s.command)} for s in config.servers],
        },
        placement={
            "server_cpus": sorted(placement.server_cpus),
            "load_cpus": sorted(placement.load_cpus),
        },
        reducers={**workload.reducers, HOST_CV: stats.mean},
    )
    failed: set[str] = set()
    host: HostCheck | None = None
    own_cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, placement.load_cpus)
    try:
        for connections, repeat, spec in trial_order(config):
            if spec.name in failed:
                continue
            label = f"N={connections} {spec.name} repeat {repeat + 1}/{config.repeat}"
            if config.host_check and not _checks(host, connections, repeat):
                host = await check_host(
                    placement.server_cpus, config.host_check, config.interval, connections, repeat
                )
                result.host_checks.append(host)
            if on_start:
                on_start(label)
            try:
                trial = await run_trial(spec, connections, repeat, config, placement)
            except BenchError as exc:
                failed.add(spec.name)
                failure = {"mode": spec.name, "connections": connections, "repeat": repeat}
                result.failures.append({**failure, "reason": str(exc)})
                if on_fail:
                    on_fail(label, str(exc))
                continue
            if host is not None:
                trial = dataclasses.replace(trial, figures={**trial.figures, HOST_CV: host.cv})
            result.trials.append(trial)
            if on_finish:
                on_finish(label, trial)
    finally:
        os.sched_setaffinity(0, own_cpus)
    return result
