"""Samples a server's whole process tree: CPU time, context switches and memory.

The processes are the server's as `processes.ServerProcesses` finds them (its cgroup, or
its tree and the owners of its listening ports). Where the server runs in a cgroup, its CPU
is the cgroup's own counter, which includes processes that exited between two snapshots.
Otherwise CPU time is read per process from ``/proc/PID/task/TID/schedstat`` (nanoseconds
of run time per thread) where the kernel has it, because the clock-tick figures of
``/proc/PID/stat`` (10 ms granularity) would add up to 2 percentage points of quantisation
noise to a 500 ms sample and inflate Cv at low loads. Processes are found on every
snapshot, so children forked during the run are counted; a process that appears between
two snapshots counts with all its CPU time, which it necessarily spent within that interval.

Each snapshot also reads the busy time of the CPUs the server is pinned to (from
``/proc/stat``), so a report can show how much *other* work shared those CPUs: this machine
may be shared with other jobs, and that load changes the figures.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from papaya_trio.bench.processes import ServerProcesses

_PROC = Path("/proc")
_USER_HZ = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessReading:
    """Cumulative counters of one process at one instant."""

    cpu_seconds: float
    voluntary_switches: int
    involuntary_switches: int
    rss_bytes: int
    pss_bytes: int


@dataclass(frozen=True)
class Snapshot:
    """Readings of every process of the tree, and of the server's CPUs, at `time`."""

    time: float
    processes: dict[int, ProcessReading]
    #: Cumulative busy seconds of the CPUs the server runs on (all processes).
    cpus_busy_seconds: float
    #: Cumulative CPU seconds of the whole server, exited processes included, where known.
    group_cpu_seconds: float | None = None


@dataclass(frozen=True)
class Interval:
    """What happened between two snapshots."""

    seconds: float
    #: CPU used by the tree, % of one core (like top).
    cpu_percent: float
    voluntary_per_second: float
    involuntary_per_second: float
    #: Memory at the end of the interval, summed over the tree.
    rss_bytes: int
    pss_bytes: int
    processes: int
    #: CPU used on the server's CPUs by anything else, % of one core.
    background_percent: float


def _schedstat_seconds(pid: int) -> float | None:
    try:
        tasks = list((_PROC / str(pid) / "task").iterdir())
        total_ns = 0
        for task in tasks:
            total_ns += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total_ns / 1e9


def cpus_busy_seconds(cpus: Collection[int]) -> float:
    """Cumulative busy (non-idle, non-iowait) seconds of the given CPUs, from /proc/stat."""
    busy_ticks = 0
    for line in (_PROC / "stat").read_text().splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        fields = [int(x) for x in rest.split()]
        # user nice system idle iowait irq softirq steal ...; guest time is already in user.
        busy_ticks += sum(fields[:8]) - fields[3] - fields[4]
    return busy_ticks / _USER_HZ


def _read(process: psutil.Process, memory: bool) -> ProcessReading | None:
    try:
        with process.oneshot():
            cpu = _schedstat_seconds(process.pid)
            if cpu is None:
                times = process.cpu_times()
                cpu = float(times.user + times.system)
            switches = process.num_ctx_switches()
            rss = pss = 0
            if memory:
                try:
                    full = process.memory_full_info()
                    rss, pss = int(full.rss), int(getattr(full, "pss", 0))
                except psutil.AccessDenied:
                    rss = int(process.memory_info().rss)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    return ProcessReading(
        cpu_seconds=cpu,
        voluntary_switches=int(switches.voluntary),
        involuntary_switches=int(switches.involuntary),
        rss_bytes=rss,
        pss_bytes=pss,
    )


class ProcessTreeSampler:
    """Takes snapshots of a server's processes; `cpus` are the CPUs it is pinned to."""

    def __init__(self, processes: ServerProcesses, cpus: Iterable[int]) -> None:
        self._processes = processes
        self._cpus = frozenset(cpus)

    def snapshot(self, now: float, memory: bool = True) -> Snapshot:
        """Read every live process of the tree; `now` is the caller's clock reading.

        Memory (RSS and PSS, from smaps) is read only with `memory`; otherwise it is 0.
        """
        readings: dict[int, ProcessReading] = {}
        for process in self._processes.processes():
            reading = _read(process, memory)
            if reading is not None:
                readings[process.pid] = reading
        return Snapshot(
            time=now,
            processes=readings,
            cpus_busy_seconds=cpus_busy_seconds(self._cpus),
            group_cpu_seconds=self._processes.cpu_seconds(),
        )


def interval(before: Snapshot, after: Snapshot) -> Interval:
    """The CPU, context switches and memory of the tree between two snapshots."""
    seconds = after.time - before.time
    if seconds <= 0:
        raise ValueError("snapshots must be in time order")
    cpu = 0.0
    voluntary = 0
    involuntary = 0
    for pid, now in after.processes.items():
        then = before.processes.get(pid)
        if then is None:
            then = ProcessReading(0.0, 0, 0, 0, 0)
        cpu += now.cpu_seconds - then.cpu_seconds
        voluntary += now.voluntary_switches - then.voluntary_switches
        involuntary += now.involuntary_switches - then.involuntary_switches
    if before.group_cpu_seconds is not None and after.group_cpu_seconds is not None:
        cpu = after.group_cpu_seconds - before.group_cpu_seconds
    busy = after.cpus_busy_seconds - before.cpus_busy_seconds
    return Interval(
        seconds=seconds,
        cpu_percent=100 * cpu / seconds,
        voluntary_per_second=voluntary / seconds,
        involuntary_per_second=involuntary / seconds,
        rss_bytes=sum(r.rss_bytes for r in after.processes.values()),
        pss_bytes=sum(r.pss_bytes for r in after.processes.values()),
        processes=len(after.processes),
        background_percent=max(0.0, 100 * (busy - cpu) / seconds),
    )
