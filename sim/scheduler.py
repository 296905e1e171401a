"""Seeded task scheduling: the one place that touches trio's private scheduler switch.

Trio shuffles each batch of runnable tasks with a module-level `random.Random`. Its own test
suite (and its Hypothesis plugin) make that order reproducible by sorting the batch by task
creation order before shuffling, a mode enabled by the private flag
`trio._core._run._ALLOW_DETERMINISTIC_SCHEDULING`, and by seeding the private `_r`. Both are
private, so this module checks the trio version it was written against and `check()` proves,
like trio's `test_scheduler_determinism`, that the switch still does what we rely on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio
from trio._core import _run

TESTED_TRIO = ((0, 27), (0, 35))  # oldest and newest minor version checked by `check()`


class SchedulerSwitchMissing(RuntimeError):
    """This trio does not have the private switch that makes scheduling reproducible."""


def _trio_version() -> tuple[int, int]:
    major, minor = trio.__version__.split(".")[:2]
    return int(major), int(minor)


@contextmanager
def seeded_scheduling(seed: int) -> Iterator[None]:
    """Within the block, `trio.run` orders ready tasks as a function of `seed` only."""
    if not (TESTED_TRIO[0] <= _trio_version() <= TESTED_TRIO[1]):
        raise SchedulerSwitchMissing(
            f"trio {trio.__version__} is outside the versions whose scheduler switch was "
            f"checked ({TESTED_TRIO}); run `sim.scheduler.check()` and widen TESTED_TRIO"
        )
    if not hasattr(_run, "_ALLOW_DETERMINISTIC_SCHEDULING") or not hasattr(_run, "_r"):
        raise SchedulerSwitchMissing("trio no longer has _ALLOW_DETERMINISTIC_SCHEDULING / _r")
    allowed = _run._ALLOW_DETERMINISTIC_SCHEDULING
    state = _run._r.getstate()
    _run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    _run._r.seed(seed)
    try:
        yield
    finally:
        _run._r.setstate(state)
        _run._ALLOW_DETERMINISTIC_SCHEDULING = allowed  # type: ignore[misc]


async def _interleaving() -> tuple[tuple[int, int], ...]:
    """A value that depends on nothing but the scheduler's choices."""
    order: list[tuple[int, int]] = []

    async def worker(name: int) -> None:
        for step in range(20):
            order.append((name, step))
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for name in range(5):
            nursery.start_soon(worker, name)
    return tuple(order)


def check() -> None:
    """Raise SchedulerSwitchMissing unless equal seeds give equal interleavings and different
    seeds give different ones."""
    runs: list[tuple[tuple[int, int], ...]] = []
    for seed in (1, 1, 2):
        with seeded_scheduling(seed):
            runs.append(trio.run(_interleaving))
    if runs[0] != runs[1]:
        raise SchedulerSwitchMissing("the same seed gave two different task orders")
    if runs[0] == runs[2]:
        raise SchedulerSwitchMissing("different seeds gave the same task order")
