"""The sweep: every mode at every connection count, interleaved and repeated.

The same for every profile; the profile's `Workload` says which generator to run and what
its result means. For each connection count N and each repeat, the modes run one after the
other, in an order rotated by the repeat number, so a machine that drifts (thermal, other
jobs) affects all modes alike. The chat profile may step through several message rates
(``--rate 10,20,30``): each rate is a sweep of its own, the outermost loop, lowest first,
and a setup that did not sustain `RATE_MISSES` rates in a row at some N (``rate_sustained``:
everything delivered at the rate asked, p99 within 100 ms) is not tried at higher rates at
that N (one miss may be a busy moment of a shared machine; two say it is saturated).
One trial, in a fresh temporary folder:

1. let the workload prepare the room folder, then start the server (`deployment`: one
   process, or K nodes and their Redis), each in a cgroup of its own where the system
   allows, pinned to the server CPU (node i to its own CPU), each node under the sweep's
   CPU quota if it has one (``--node-cpu``, `cpuquota`), lifted while the clients join;
   take a baseline memory reading once it listens;
2. start the load generator (another process) pinned to the remaining CPUs (`Placement`),
   with the port of every node, and wait for its "ready" line (all N connections open);
   then hold the nodes to their quota again;
3. let `warmup` seconds pass (forks, first-touch memory), then take a snapshot of the
   server's processes (and of Redis's, apart) every `interval` seconds for `duration`
   seconds (memory in the last one only: reading it for thousands of forked processes
   takes longer than an interval), and how often the nodes' quota throttled them;
4. read the generator's result and stop every process the server started.

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
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trio

from papaya_trio.bench import stats
from papaya_trio.bench.cpuquota import CpuQuota, QuotaGroup
from papaya_trio.bench.deployment import STARTUP_TIMEOUT, BenchError, deploy
from papaya_trio.bench.sampler import Interval, ProcessTreeSampler, Snapshot, interval
from papaya_trio.bench.servers import ServerSpec
from papaya_trio.bench.steadiness import HOST_CV, HostCheck, check_host
from papaya_trio.bench.workloads import Reducer, SweepConfig, Workload, ready_timeout

#: The machine's 1-minute load average at the end of each trial, among its figures.
LOAD_AVERAGE = "load_average"
#: Under a CPU quota: the share of the nodes' scheduling periods in the measured window
#: in which the quota stopped them (near 100: the nodes were saturated).
THROTTLED = "throttled_percent"
#: The chat profile's figure: 1 where a trial sustained its message rate (see `workloads`).
RATE_SUSTAINED = "rate_sustained"
#: A setup is not tried at higher rates once it did not sustain this many in a row.
RATE_MISSES = 2
#: A trial is flagged when other work used more than this on the server's CPU.
BACKGROUND_LIMIT = 5.0
_MAX_LINE = 1 << 20


@dataclass(frozen=True)
class Placement:
    """Which CPUs the server's nodes, Redis and the load generator (with the runner) use."""

    server_cpus: frozenset[int]
    load_cpus: frozenset[int]
    #: Node i's CPUs (one node, the server, unless the spec has several).
    node_cpus: tuple[frozenset[int], ...] = ()
    redis_cpus: frozenset[int] = frozenset()

    @property
    def pinned(self) -> bool:
        """Whether the server's CPUs run nothing else the bench started."""
        return not self.server_cpus & (self.load_cpus | self.redis_cpus)

    @classmethod
    def choose(
        cls, available: Sequence[int], pin: bool = True, nodes: int = 1, redis: bool = False
    ) -> Placement:
        """Node i on CPU i, then Redis on a CPU of its own if two are left (else with the
        load), the rest for the load; whatever finds no CPU of its own shares them all, and
        nothing is pinned on one CPU or without `pin`."""
        cpus = sorted(available)
        every = frozenset(cpus)
        if not pin or len(cpus) < 2:
            return cls(every, every, (every,) * nodes, every if redis else frozenset())
        node_cpus = tuple(frozenset({cpus[i % len(cpus)]}) for i in range(nodes))
        rest = cpus[nodes:]
        load = frozenset(rest) if rest else every
        redis_cpus = load if redis else frozenset()
        if redis and len(rest) >= 2:
            redis_cpus, load = frozenset(rest[:1]), frozenset(rest[1:])
        return cls(frozenset().union(*node_cpus), load, node_cpus, redis_cpus)

    def to_json(self) -> dict[str, object]:
        """The CPUs of each part, as lists."""
        return {
            "server_cpus": sorted(self.server_cpus),
            "load_cpus": sorted(self.load_cpus),
            "node_cpus": [sorted(cpus) for cpus in self.node_cpus],
            "redis_cpus": sorted(self.redis_cpus),
        }


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
    #: Where the nodes, Redis and the load ran (see `Placement.to_json`).
    placement: dict[str, object] = field(default_factory=dict)
    #: The chat profile's message rate, when the sweep steps through several.
    rate: float | None = None
    #: Each node's CPU quota (`cpuquota.QuotaGroup.to_json`); empty: none.
    cpu_quota: dict[str, object] = field(default_factory=dict)


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
    rate: float | None = None
    cpu_quota: dict[str, object] = field(default_factory=dict)


@dataclass
class SweepResult:
    """Everything a sweep measured, with the conditions it ran under."""

    profile: str
    config: dict[str, object]
    placement: dict[str, object]
    reducers: Mapping[str, Reducer]
    trials: list[Trial] = field(default_factory=list)
    #: Trials that could not be run: mode, connections, repeat and reason.
    failures: list[dict[str, object]] = field(default_factory=list)
    host_checks: list[HostCheck] = field(default_factory=list)

    def points(self) -> list[Point]:
        """Trials aggregated per (mode, connections, rate), in sweep order."""
        groups: dict[tuple[str, int, float | None], list[Trial]] = {}
        for trial in self.trials:
            groups.setdefault((trial.mode, trial.connections, trial.rate), []).append(trial)
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
    """Aggregate the repeats of one mode at one connection count (and rate).

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
        rate=trials[0].rate,
        cpu_quota=trials[0].cpu_quota,
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
    #: The sampling intervals of the nodes' Redis, if they had one.
    redis_intervals: Sequence[Interval] = ()
    placement: Placement | None = None
    rate: float | None = None
    #: The nodes' quota cgroups, and their (periods, throttled periods) in the window.
    quotas: Sequence[QuotaGroup] = ()
    throttling: tuple[int, int] = (0, 0)


def summarise(run: TrialRun, workload: Workload) -> Trial:
    """Turn one trial's sampling intervals and the generator's result into a `Trial`."""
    samples = [i.cpu_percent for i in run.intervals]
    cpu = stats.mean(samples)
    background = stats.mean([i.background_percent for i in run.intervals])
    reasons = [str(run.load.get("flag_reason"))] if run.load.get("flagged") else []
    # Where the load or Redis share the server's CPUs by design, their work is "background"
    # too: it is recorded, but it flags nothing.
    exclusive = run.placement is None or run.placement.pinned
    if background > BACKGROUND_LIMIT and exclusive:
        reasons.append(f"other work used {background:.1f}% of the server CPU")
    redis_cpu = (
        stats.mean([i.cpu_percent for i in run.redis_intervals]) if run.redis_intervals else None
    )
    figures = workload.figures(run.load, cpu, redis_cpu)
    periods, throttled = run.throttling
    if periods:
        figures[THROTTLED] = 100 * throttled / periods
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
        figures=figures,
        flagged=bool(reasons),
        flag_reason="; ".join(reasons),
        placement=run.placement.to_json() if run.placement else {},
        rate=run.rate,
        cpu_quota=run.quotas[0].to_json() if run.quotas else {},
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


async def run_trial(
    spec: ServerSpec,
    connections: int,
    repeat: int,
    config: SweepConfig,
    placement: Placement,
    rate: float | None = None,
) -> Trial:
    """Run one mode at one connection count (and message rate), in a temporary folder, and
    summarise it."""
    workload = config.workload_at(rate)
    quota = CpuQuota.of(config.node_cpu) if config.node_cpu is not None else None
    with tempfile.TemporaryDirectory(prefix="papaya-bench-") as tmp:
        workdir = Path(tmp)
        workload.prepare(workdir / "data")
        async with deploy(
            spec, placement.node_cpus, placement.redis_cpus, workdir, quota
        ) as deployment:
            samplers = [ProcessTreeSampler(deployment.server, placement.server_cpus)]
            if deployment.redis is not None:
                samplers.append(ProcessTreeSampler(deployment.redis, placement.redis_cpus))
            baseline = samplers[0].snapshot(trio.current_time(), memory=True)
            _hold(deployment.quotas, capped=False)
            argv = workload.generator_argv(
                deployment.ports, connections, config.load_seconds, workdir / "data"
            )
            load = await trio.lowlevel.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
            )
            try:
                os.sched_setaffinity(load.pid, placement.load_cpus)
                with _runner_on(placement.load_cpus):
                    sampling = await _sample_during_load(
                        load, samplers, deployment.quotas, connections, config
                    )
            finally:
                await _stop(load)
                if load.stdout is not None:
                    await load.stdout.aclose()
    series, throttling, result = sampling
    server, *redis = [[interval(a, b) for a, b in itertools.pairwise(s)] for s in series]
    run = TrialRun(
        spec,
        connections,
        repeat,
        baseline,
        server,
        result,
        redis_intervals=redis[0] if redis else (),
        placement=placement,
        rate=rate,
        quotas=deployment.quotas,
        throttling=throttling,
    )
    return summarise(run, workload)


@contextmanager
def _runner_on(cpus: frozenset[int]) -> Iterator[None]:
    """Keep the runner's thread on `cpus` meanwhile, off the server's CPU.

    Only around the sampling: a worker thread that trio starts while the runner is pinned
    (``open_process`` runs ``Popen`` in one) inherits the pinning and keeps it when it goes
    back to trio's thread cache.
    """
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


async def _stop(process: trio.Process) -> None:
    """Kill the generator if it is still running; shielded from cancellation."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.kill()
        await process.wait()


async def _sample_during_load(
    load: trio.Process,
    samplers: Sequence[ProcessTreeSampler],
    quotas: Sequence[QuotaGroup],
    connections: int,
    config: SweepConfig,
) -> tuple[list[list[Snapshot]], tuple[int, int], dict[str, object]]:
    """Wait for the generator's clients, sample the servers (and the throttling of their
    quotas, over the same window), read the generator's result."""
    assert load.stdout is not None
    ready = await _read_line(load.stdout, trio.current_time() + ready_timeout(connections))
    event = json.loads(ready or "{}")
    if event.get("event") != "ready":
        raise BenchError(f"load generator did not start: {event.get('reason', ready)!r}")
    _hold(quotas, capped=True)
    series, throttling = await _sample(
        samplers, quotas, trio.current_time() + config.warmup, config
    )
    done = trio.current_time() + config.load_seconds + config.workload.drain + STARTUP_TIMEOUT
    line = await _read_line(load.stdout, done)
    result = json.loads(line or "{}")
    if result.pop("event", None) != "result":
        raise BenchError(f"load generator gave no result: {line!r}")
    return series, throttling, result


def _hold(quotas: Sequence[QuotaGroup], capped: bool) -> None:
    """Hold every node to its quota, or lift it; BenchError if the kernel refuses."""
    for quota in quotas:
        try:
            quota.hold(capped)
        except OSError as exc:
            raise BenchError(f"cannot set the CPU quota of {quota.path}: {exc}") from None


def _throttling(quotas: Sequence[QuotaGroup]) -> tuple[int, int]:
    """(periods, throttled periods) so far, every node's together."""
    counts = [quota.throttling() for quota in quotas]
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


async def _sample(
    samplers: Sequence[ProcessTreeSampler],
    quotas: Sequence[QuotaGroup],
    start: float,
    config: SweepConfig,
) -> tuple[list[list[Snapshot]], tuple[int, int]]:
    """Snapshots of each sampler every interval (memory in the last ones only), and the
    quotas' throttling between the first and the last."""
    count = round(config.duration / config.interval) + 1
    series: list[list[Snapshot]] = [[] for _ in samplers]
    before = after = (0, 0)
    for k in range(count):
        await trio.sleep_until(start + k * config.interval)
        last = k == count - 1
        for sampler, snapshots in zip(samplers, series, strict=True):
            snapshots.append(sampler.snapshot(trio.current_time(), memory=last))
        if k == 0:
            before = _throttling(quotas)
        if last:
            after = _throttling(quotas)
    return series, (after[0] - before[0], after[1] - before[1])


def trial_order(config: SweepConfig) -> list[tuple[float | None, int, int, ServerSpec]]:
    """(rate, connections, repeat, server) in run order: modes rotated on every repeat, the
    rates (None: the workload's own) outermost."""
    order = []
    servers = list(config.servers)
    for rate in config.rates or (None,):
        for connections in config.connections:
            for repeat in range(config.repeat):
                shift = repeat % len(servers)
                for spec in servers[shift:] + servers[:shift]:
                    order.append((rate, connections, repeat, spec))
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
    """Run every trial of `config`; the runner itself moves to the load CPUs while it samples.

    A trial that fails (BenchError) is recorded in `failures`, and its mode is skipped for
    the rest of the sweep (larger N, higher rates); a setup that did not sustain
    `RATE_MISSES` rates in a row at some N is not tried at higher rates at that N.
    """
    available = sorted(os.sched_getaffinity(0))
    placement = Placement.choose(
        available,
        pin=config.pin,
        nodes=max(s.nodes for s in config.servers),
        redis=any(s.redis_appendfsync for s in config.servers),
    )
    workload = config.workload
    settings = asdict(config)  # the workload, a dataclass too, becomes a dict here
    result = SweepResult(
        profile=workload.profile,
        config={
            **{k: v for k, v in settings.items() if k not in ("servers", "workload")},
            "workload": {"profile": workload.profile, **settings["workload"]},
            "servers": [{"name": s.name, "command": list(s.command)} for s in config.servers],
        },
        placement=placement.to_json(),
        reducers={
            **workload.reducers,
            HOST_CV: stats.mean,
            LOAD_AVERAGE: stats.mean,
            THROTTLED: stats.mean,
        },
    )
    failed: set[str] = set()
    #: The rates each (setup, N) did not sustain since the last one it did.
    missed: dict[tuple[str, int], set[float]] = {}
    host: HostCheck | None = None
    for rate, connections, repeat, spec in trial_order(config):
        setup = (spec.name, connections)
        if spec.name in failed or len(missed.get(setup, ())) >= RATE_MISSES:
            continue
        label = f"N={connections} {spec.name} repeat {repeat + 1}/{config.repeat}"
        if rate is not None:
            label = f"{rate:g} msg/s {label}"
        if config.host_check and not _checks(host, connections, repeat):
            host = await check_host(
                placement.server_cpus, config.host_check, config.interval, connections, repeat
            )
            result.host_checks.append(host)
        if on_start:
            on_start(label)
        own = Placement.choose(
            available, config.pin, spec.nodes, redis=spec.redis_appendfsync is not None
        )
        try:
            trial = await run_trial(spec, connections, repeat, config, own, rate)
        except BenchError as exc:
            failed.add(spec.name)
            failure = {"mode": spec.name, "connections": connections, "repeat": repeat}
            if rate is not None:
                failure["rate"] = rate
            result.failures.append({**failure, "reason": str(exc)})
            if on_fail:
                on_fail(label, str(exc))
            continue
        # How busy the whole machine was: it may be shared with other jobs.
        figures = {**trial.figures, LOAD_AVERAGE: os.getloadavg()[0]}
        if host is not None:
            figures[HOST_CV] = host.cv
        trial = dataclasses.replace(trial, figures=figures)
        result.trials.append(trial)
        if rate is not None and trial.figures.get(RATE_SUSTAINED) == 1.0:
            missed.pop(setup, None)
        elif rate is not None:
            missed.setdefault(setup, set()).add(rate)
        if on_finish:
            on_finish(label, trial)
    return result
