"""How steady is the server's CPU itself? A fixed loop, sampled like a trial.

On a virtual machine the same work does not always cost the same CPU time: while the host
gives the vCPU's physical core to other guests or to the sibling hyperthread, every
instruction takes longer, for seconds at a time. A sink whose work is perfectly regular
then still shows a Cv, and no server can do better than that floor. The host check runs a
fixed amount of Python work per step on the server CPU, with nothing else there (between
trials), and samples its speed (steps per CPU second) every `interval`, exactly as the
sampler samples a server: the Cv of those speeds is the floor of the trials run next.

The loop runs in a worker thread pinned to the server CPU, so the trio thread stays free
and the check ends promptly when the sweep is cancelled.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection
from dataclasses import dataclass

import trio

from papaya_trio.bench import stats

#: The figure each trial gets from the host check run before it.
HOST_CV = "host_cv"
#: Loop iterations per step: about 0.1 ms of CPU, short next to a sampling interval.
STEP_ITERATIONS = 2000


@dataclass(frozen=True)
class HostCheck:
    """One check: the fixed loop's speed in each interval, and their Cv."""

    connections: int
    repeat: int
    #: Steps per CPU second, one per sampling interval.
    speeds: list[float]
    cv: float


def _step() -> None:
    for _ in range(STEP_ITERATIONS):
        pass


def _measure(cpus: Collection[int], seconds: float, interval: float) -> list[float]:
    """Run the fixed loop on `cpus` for `seconds`; its speed in each `interval`.

    Pins only this worker thread, and unpins it before returning: trio reuses its worker
    threads for other jobs.
    """
    own_cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        speeds = []
        end = time.monotonic() + seconds
        started, cpu_started, steps = time.monotonic(), time.thread_time(), 0
        while started < end:
            _step()
            steps += 1
            now = time.monotonic()
            if now - started >= interval:
                cpu_now = time.thread_time()
                speeds.append(steps / (cpu_now - cpu_started))
                started, cpu_started, steps = now, cpu_now, 0
                trio.from_thread.check_cancelled()
        return speeds
    finally:
        os.sched_setaffinity(0, own_cpus)


async def check_host(
    cpus: Collection[int], seconds: float, interval: float, connections: int, repeat: int
) -> HostCheck:
    """Measure how steady `cpus` are over `seconds`, sampled every `interval`.

    Raises ValueError when `seconds` holds fewer than two intervals (no Cv to speak of).
    """
    if seconds < 2 * interval:
        raise ValueError("a host check must cover at least two sampling intervals")
    speeds = await trio.to_thread.run_sync(_measure, frozenset(cpus), seconds, interval)
    return HostCheck(connections, repeat, speeds, stats.coefficient_of_variation(speeds))
