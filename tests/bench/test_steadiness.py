"""The host check: a fixed loop timed on the server CPU, sampled like a trial."""

from __future__ import annotations

import os

import pytest
import trio

from papaya_trio.bench import stats
from papaya_trio.bench.steadiness import check_host

CPU = min(os.sched_getaffinity(0))


async def test_one_speed_per_interval_and_their_cv() -> None:
    check = await check_host({CPU}, seconds=1.0, interval=0.25, connections=8, repeat=1)
    assert (check.connections, check.repeat) == (8, 1)
    assert len(check.speeds) == 4
    assert all(speed > 0 for speed in check.speeds)
    assert check.cv == stats.coefficient_of_variation(check.speeds)


async def test_a_check_shorter_than_two_intervals_is_refused() -> None:
    with pytest.raises(ValueError, match="two sampling intervals"):
        await check_host({CPU}, seconds=0.4, interval=0.25, connections=1, repeat=0)


async def test_cancelling_the_sweep_stops_the_check_early() -> None:
    started = trio.current_time()
    with trio.move_on_after(0.3) as scope:
        await check_host({CPU}, seconds=60.0, interval=0.25, connections=1, repeat=0)
    assert scope.cancelled_caught
    assert trio.current_time() - started < 30  # far from the 60 s it would run uncancelled


async def test_the_check_leaves_the_callers_cpus_alone() -> None:
    before = os.sched_getaffinity(0)
    await check_host({CPU}, seconds=0.5, interval=0.25, connections=1, repeat=0)
    assert os.sched_getaffinity(0) == before
    # trio hands the same idle worker thread to the next job: it must not stay pinned.
    assert await trio.to_thread.run_sync(os.sched_getaffinity, 0) == before
