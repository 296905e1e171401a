"""A trio instrument that counts scheduler steps and the server's live tasks.

The step count stamps every trace event (with the simulated time it says exactly where a run
was); the task counts prove that a client's tasks are gone after it leaves.
"""

from __future__ import annotations

from collections import Counter

import trio

# The server's code, and the library its WebSocket connections run on.
SERVER_PACKAGES = ("papaya_trio.", "trio_websocket.")


class TaskCounter(trio.abc.Instrument):
    """Counts steps, and live tasks of the server package by function name."""

    def __init__(self) -> None:
        self.steps = 0
        self.live: Counter[str] = Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1

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
