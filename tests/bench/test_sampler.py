"""The sampler's arithmetic on synthetic snapshots, and one real snapshot."""

from __future__ import annotations

import os

import pytest

from papaya_trio.bench.processes import ServerProcesses
from papaya_trio.bench.sampler import (
    ProcessReading,
    ProcessTreeSampler,
    Snapshot,
    cpus_busy_seconds,
    interval,
)


def reading(cpu: float, voluntary: int = 0, involuntary: int = 0) -> ProcessReading:
    return ProcessReading(cpu, voluntary, involuntary, rss_bytes=1000, pss_bytes=400)


def test_interval_sums_the_tree_and_counts_new_children_fully() -> None:
    before = Snapshot(10.0, {1: reading(1.0, 10, 1)}, cpus_busy_seconds=5.0)
    after = Snapshot(
        10.5,
        # The parent used 0.1 s; a child forked during the interval used 0.05 s.
        {1: reading(1.1, 20, 1), 2: reading(0.05, 5, 0)},
        cpus_busy_seconds=5.25,
    )
    result = interval(before, after)
    assert result.cpu_percent == pytest.approx(30.0)
    assert result.voluntary_per_second == pytest.approx(30.0)
    assert result.involuntary_per_second == 0.0
    assert result.processes == 2
    assert (result.rss_bytes, result.pss_bytes) == (2000, 800)
    # The CPUs were busy 0.25 s, of which the tree used 0.15 s.
    assert result.background_percent == pytest.approx(20.0)


def test_interval_rejects_snapshots_out_of_order() -> None:
    snapshot = Snapshot(1.0, {}, 0.0)
    with pytest.raises(ValueError, match="time order"):
        interval(snapshot, snapshot)


def test_a_real_snapshot_of_this_process() -> None:
    sampler = ProcessTreeSampler(ServerProcesses([os.getpid()], None), os.sched_getaffinity(0))
    snapshot = sampler.snapshot(0.0)
    mine = snapshot.processes[os.getpid()]
    assert mine.cpu_seconds > 0
    assert mine.rss_bytes > 0
    assert cpus_busy_seconds(os.sched_getaffinity(0)) > 0
    assert snapshot.group_cpu_seconds is None  # no cgroup: the CPU is summed per process


def test_a_group_counter_replaces_the_per_process_sum() -> None:
    # A process that exited between the snapshots is gone from `processes` but its CPU is
    # in the cgroup's counter, which the interval uses.
    before = Snapshot(0.0, {1: reading(1.0), 2: reading(0.5)}, 0.0, group_cpu_seconds=3.0)
    after = Snapshot(0.5, {1: reading(1.1)}, 0.5, group_cpu_seconds=3.25)
    assert interval(before, after).cpu_percent == pytest.approx(50.0)
