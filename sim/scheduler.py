"""Seeded task scheduling and the step count: the one place that touches trio's private
scheduler switch.

Trio shuffles each batch of runnable tasks with a module-level `random.Random`. Its own test
suite (and its Hypothesis plugin) make that order reproducible by sorting the batch by task
creation order before shuffling, a mode enabled by the private flag
`trio._core._run._ALLOW_DETERMINISTIC_SCHEDULING`, and by seeding the private `_r`. Both are
private, so this module checks the trio version it was written against and `check()` proves,
like trio's `test_scheduler_determinism`, that the switch still does what we rely on.

Within `seeded_scheduling`, `_r` is a `SeededOrder`: a `random.Random` seeded as before (so it
shuffles every batch exactly as the seeded original did) that also counts the run's steps.
trio hands it each batch just before running it and then pops the batch's tasks from that same
list, one step each, so the steps taken so far are those of the batches before plus what has
left the current one. Counting there costs one call per batch; a `trio.abc.Instrument`'s
`before_task_step` costs one per step. `check()` also proves the count equals the
instrument's.

`sparse_io_polls` is the other private hook: trio's run loop asks the OS for I/O events (an
`epoll` or `kqueue` call) on every pass, with a timeout of 0 whenever it will not wait, which
under `sim.clock.JumpClock` is every pass. A simulated run has no sockets or files: the only
descriptor trio watches is its own wake-up socket (signals such as Ctrl-C, and results from
worker threads, which no simulated component uses). Within the block, a pass that would not
wait polls only once in POLL_EVERY; a pass that would wait polls as before. No task can tell
(nothing it waits for comes through the poll), so every decision and digest is the same; a
signal or a thread's result is seen at most POLL_EVERY passes later (microseconds). About 5 %
of a churn seed's CPU time (measured back to back, sim/README.md).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, MutableSequence
from contextlib import contextmanager
from typing import Any

import trio
import trio.testing
from trio._core import _run

TESTED_TRIO = ((0, 27), (0, 35))  # oldest and newest minor version checked by `check()`
CHECK_EVERY = 1_000  # steps between two calls of `on_pace`
POLL_EVERY = 32  # passes of the run loop between two I/O polls when it would not wait


class SchedulerSwitchMissing(RuntimeError):
    """This trio does not have the private switch that makes scheduling reproducible."""


class SeededOrder(random.Random):
    """trio's batch shuffler, seeded, counting scheduler steps. `on_pace(steps)` is called at
    the start of the first batch at or past every CHECK_EVERY steps (the livelock watchdog)."""

    def __init__(self, seed: int, on_pace: Callable[[int], None] | None = None) -> None:
        super().__init__(seed)
        self._on_pace = on_pace
        self._done = 0  # steps of the batches before the current one
        self._size = 0  # tasks in the current batch
        self._batch: MutableSequence[Any] = []  # the current batch (trio pops from it)
        self._next_pace = CHECK_EVERY

    @property
    def steps(self) -> int:
        """Scheduler steps begun so far (the current one included)."""
        return self._done + self._size - len(self._batch)

    def shuffle(self, x: MutableSequence[Any]) -> None:
        self._done += self._size
        self._size, self._batch = len(x), x
        if len(x) > 1:  # shuffling fewer draws nothing
            super().shuffle(x)
        if self._done >= self._next_pace:
            self._next_pace = self._done + CHECK_EVERY
            if self._on_pace is not None:
                self._on_pace(self._done)


def _trio_version() -> tuple[int, int]:
    major, minor = trio.__version__.split(".")[:2]
    return int(major), int(minor)


@contextmanager
def seeded_scheduling(
    seed: int, on_pace: Callable[[int], None] | None = None
) -> Iterator[SeededOrder]:
    """Within the block, `trio.run` orders ready tasks as a function of `seed` only; the
    `SeededOrder` yielded counts the steps (see the class for `on_pace`)."""
    if not (TESTED_TRIO[0] <= _trio_version() <= TESTED_TRIO[1]):
        raise SchedulerSwitchMissing(
            f"trio {trio.__version__} is outside the versions whose scheduler switch was "
            f"checked ({TESTED_TRIO}); run `sim.scheduler.check()` and widen TESTED_TRIO"
        )
    if not hasattr(_run, "_ALLOW_DETERMINISTIC_SCHEDULING") or not hasattr(_run, "_r"):
        raise SchedulerSwitchMissing("trio no longer has _ALLOW_DETERMINISTIC_SCHEDULING / _r")
    allowed, saved = _run._ALLOW_DETERMINISTIC_SCHEDULING, _run._r
    order = SeededOrder(seed, on_pace)
    _run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    _run._r = order
    try:
        yield order
    finally:
        _run._r = saved
        _run._ALLOW_DETERMINISTIC_SCHEDULING = allowed  # type: ignore[misc]


@contextmanager
def sparse_io_polls(every: int = POLL_EVERY) -> Iterator[None]:
    """Within the block, trio's run loop polls for I/O once in `every` passes that would not
    wait (see the module); outside it, as trio does. Where trio's I/O manager is neither
    epoll's nor kqueue's (Windows), nothing changes."""
    manager: Any = _run.TheIOManager  # type: ignore[attr-defined]
    if manager.__name__ not in ("EpollIOManager", "KqueueIOManager"):
        yield
        return
    original = manager.get_events
    skipped = 0

    def get_events(self: Any, timeout: float) -> Any:
        nonlocal skipped
        if timeout == 0 and skipped < every - 1:
            skipped += 1
            return []  # no events (both managers return a list)
        skipped = 0
        return original(self, timeout)

    manager.get_events = get_events
    try:
        yield
    finally:
        manager.get_events = original


class _StepInstrument(trio.abc.Instrument):
    """Counts steps the costly way, and what `SeededOrder` says at each."""

    def __init__(self, order: SeededOrder) -> None:
        self.steps = 0
        self.counted: list[tuple[int, int]] = []
        self._order = order

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.counted.append((self.steps, self._order.steps))


async def _interleaving() -> tuple[tuple[int, int], ...]:
    """A value that depends on nothing but the scheduler's choices."""
    order: list[tuple[int, int]] = []

    async def worker(name: int) -> None:
        for step in range(20):
            order.append((name, step))
            if step % 7 == name:
                await trio.sleep(0.001 * name)  # batches of changing size
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for name in range(5):
            nursery.start_soon(worker, name)
    return tuple(order)


def check() -> None:
    """Raise SchedulerSwitchMissing unless equal seeds give equal interleavings, different
    seeds give different ones, and the step count is an instrument's."""
    runs: list[tuple[tuple[int, int], ...]] = []
    for seed in (1, 1, 2):
        with seeded_scheduling(seed) as order:
            instrument = _StepInstrument(order)
            clock = trio.testing.MockClock(autojump_threshold=0)
            runs.append(trio.run(_interleaving, clock=clock, instruments=[instrument]))
        if any(counted != steps for steps, counted in instrument.counted):
            raise SchedulerSwitchMissing("the step count of SeededOrder is not trio's")
    if runs[0] != runs[1]:
        raise SchedulerSwitchMissing("the same seed gave two different task orders")
    if runs[0] == runs[2]:
        raise SchedulerSwitchMissing("different seeds gave the same task order")
