"""The simulation's clock: trio's autojumping mock clock, without its cost.

`trio.testing.MockClock(autojump_threshold=0)` jumps to the next deadline whenever every task
is blocked. It reads the real clock on every `current_time()` (to scale it by a rate that is
0 here) and needs two passes of the run loop per jump (one to notice that nothing is
runnable, one to run what the jump woke). trio asks a clock for `deadline_to_sleep_time` only
when no task is runnable, just before it would wait for I/O, so `JumpClock` jumps there, by
the very sum MockClock computes (`now += deadline - now`, so the times are equal to the last
bit), and says not to sleep: the same tasks wake at the same simulated times in one pass, and
`current_time()` is an attribute read. It uses only the public `trio.abc.Clock` interface;
`check()` proves it still behaves as MockClock does (the tests run it).
"""

from __future__ import annotations

import math

import trio
import trio.testing

from sim.scheduler import seeded_scheduling


class JumpClock(trio.abc.Clock):
    """Simulated time that moves only when every task is blocked, straight to the next
    deadline (MockClock with `autojump_threshold=0`)."""

    def __init__(self) -> None:
        self._now = 0.0

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return self._now

    def deadline_to_sleep_time(self, deadline: float) -> float:
        jump = deadline - self._now
        if 0 < jump < math.inf:
            self._now += jump
        return 0.0


async def _timeline() -> list[tuple[str, float]]:
    """What a few tasks that sleep, time out and wake each other see of the clock."""
    seen: list[tuple[str, float]] = []
    woken = trio.Event()

    async def sleeper(name: str, naps: tuple[float, ...]) -> None:
        for nap in naps:
            await trio.sleep(nap)
            seen.append((name, trio.current_time()))
        woken.set()

    async def waiter() -> None:
        with trio.move_on_after(0.3):
            await woken.wait()
        seen.append(("waiter", trio.current_time()))
        await woken.wait()
        seen.append(("woken", trio.current_time()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper, "a", (0.1, 0.7, 1e-7, 0.2))
        nursery.start_soon(sleeper, "b", (0.05, 0.05, 0.3))
        nursery.start_soon(waiter)
    return seen


def check() -> None:
    """Raise AssertionError unless JumpClock gives the timeline MockClock gives."""
    with seeded_scheduling(1):
        mock = trio.run(_timeline, clock=trio.testing.MockClock(autojump_threshold=0))
    with seeded_scheduling(1):
        jump = trio.run(_timeline, clock=JumpClock())
    assert jump == mock, f"JumpClock saw {jump}, MockClock {mock}"
