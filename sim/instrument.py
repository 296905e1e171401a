"""A trio instrument that counts the server's live tasks, and the livelock watchdog.

The task counts prove that a client's tasks are gone after it leaves. The scheduler steps that
stamp every trace event are counted by `sim.scheduler.SeededOrder` (one call per batch of
tasks, not one per step); the counter reads them there.

The watchdog turns a livelock into a failure. Under the simulation's clock, time only jumps
when every task is blocked, so a task that checkpoints in a loop without ever sleeping
freezes simulated time: no timeout fires and the run would spin forever. Every CHECK_EVERY
steps (`SeededOrder` calls `pace`) the counter notes which whole simulated second it is and
how many steps were taken since that second was first seen; past `step_budget` it calls
`on_runaway` once (the run records the failure and cancels everything, and the spinning task
meets the cancellation at its next checkpoint). Checking every so many steps, rather than on
every pass of the run loop, keeps the watchdog's cost out of the profile; it counts at most
CHECK_EVERY steps of the previous second too, which the budget dwarfs. A frozen clock is the
extreme case (every step in one second); a loop that sleeps a microsecond at a time is caught
the same way. The busiest second of ordinary runs takes under 10,000 steps (measured on seeds
0..2 of smoke, churn, slow-consumer and swarm), so the default budget leaves a wide margin. A
loop that never checkpoints at all cannot be caught from inside the run (the run loop never
gets control).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import trio

from sim.scheduler import SeededOrder

# The server's code, and the library its WebSocket connections run on.
SERVER_PACKAGES = ("papaya_trio.", "trio_websocket.")
STEP_BUDGET = 200_000  # scheduler steps one simulated second may take


class TaskCounter(trio.abc.Instrument):
    """Counts live tasks of the server package by function name, reads the step count from
    `order` (set once the run's scheduling is seeded), and calls `on_runaway(second, steps)`
    once if one simulated second takes more than `step_budget` steps."""

    def __init__(
        self,
        on_runaway: Callable[[int, int], None] | None = None,
        step_budget: int = STEP_BUDGET,
    ) -> None:
        self.order: SeededOrder | None = None
        self.live: Counter[str] = Counter()
        self._on_runaway = on_runaway
        self._budget = step_budget
        self._second = -1
        self._second_began = 0  # the step count when the current simulated second began
        self._tripped = False

    @property
    def steps(self) -> int:
        """Scheduler steps so far."""
        return self.order.steps if self.order is not None else 0

    def pace(self, steps: int) -> None:
        """`steps` have been taken: check the pace of simulated time."""
        second = int(trio.current_time())
        if second != self._second:
            self._second, self._second_began = second, steps
        elif steps - self._second_began > self._budget and not self._tripped:
            self._tripped = True
            if self._on_runaway is not None:
                self._on_runaway(second, steps - self._second_began)

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        if task.name.startswith(SERVER_PACKAGES):
            self.live[task.name] += 1

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        if task.name.startswith(SERVER_PACKAGES):
            self.live[task.name] -= 1
            if not self.live[task.name]:
                del self.live[task.name]

    def server_tasks(self, *, excluding: tuple[str, ...] = ()) -> dict[str, int]:
        """Live server tasks by name, leaving out names that contain any of `excluding`."""
        return {
            name: count
            for name, count in sorted(self.live.items())
            if not any(part in name for part in excluding)
        }
