"""The simulated disk under the log: latency, lost unsynced writes, torn tails, failures.

`SimDisk` is the platter: the bytes written so far and how many of them are durable.
`SimStorage` is one server process's handle on it and implements the `Storage` protocol of
`papaya_trio.storage`. A power cut (`SimDisk.power_cut`) keeps the durable bytes plus, maybe,
a random part of the unsynced ones (a torn last record) and kills every open handle, so a
crashed server can never write again; the restarted server opens a fresh handle.

Faults are drawn from the run's seed: a write may fail with ENOSPC after writing part of its
data (the disk is full), an fsync may fail with EIO (the data is then not durable). An fsync
covers only the bytes present when it began, as a real one does. The director can also ask
for a power cut at the worst moment of a group commit (`wait_commit_window`).
"""

from __future__ import annotations

import errno
import os
import random
from dataclasses import dataclass

import trio

from sim.trace import Trace

NO_LATENCY = (0.0, 0.0)
KILL_GRACE = (0.001, 0.001)  # how long an fsync picked for a kill waits for the power cut


@dataclass(frozen=True, slots=True)
class DiskFaults:
    """Latencies and failure rates of the simulated disk."""

    write_latency: tuple[float, float] = (0.0, 0.002)
    sync_latency: tuple[float, float] = (0.001, 0.02)
    write_failure: float = 0.0  # chance that one append hits ENOSPC
    sync_failure: float = 0.0  # chance that one fsync fails with EIO
    keep_unsynced: float = 0.5  # chance that a power cut keeps part of the unsynced bytes


class SimDisk:
    """The bytes of the log file as the hardware holds them."""

    def __init__(self, rng: random.Random, faults: DiskFaults, trace: Trace) -> None:
        self.rng = rng
        self.faults = faults
        self.trace = trace
        self.data = bytearray()
        self.synced = 0
        self.generation = 0  # bumped by each power cut; older handles are dead
        self.version = 0  # bumped by every change of `data`
        self.rewrites = 0  # bumped by every change of `data` other than an append
        self.sync_failures = 0
        self._late = False  # the last fsync saw bytes written while it ran
        self._kill: trio.Event | None = None  # armed by `wait_commit_window`

    def open(self) -> SimStorage:
        """A new handle, as a (re)started server opens the file."""
        return SimStorage(self, self.generation)

    async def wait_commit_window(self) -> None:
        """Return at the last moment of the next fsync that would make durable bytes written
        during the fsync before it (a group commit with writers that came late); that fsync
        then waits KILL_GRACE more, in which the caller cuts the power. A log that confirmed
        those writers early (when the fsync before ended) then loses records it confirmed."""
        self._kill = trio.Event()
        try:
            await self._kill.wait()
        finally:
            self._kill = None

    def kill_now(self, covered: int) -> bool:
        """Whether an fsync covering `covered` bytes is the one `wait_commit_window` waits
        for (if so, the waiter is woken)."""
        if self._kill is None or not self._late or covered <= self.synced:
            return False
        self._kill.set()
        self.trace.record("kill_in_commit", synced=self.synced, covered=covered)
        return True

    def mark_synced(self, covered: int) -> None:
        """An fsync that began with `covered` bytes written has finished."""
        self.synced = max(self.synced, min(covered, len(self.data)))
        self._late = len(self.data) > covered
        self.trace.record("fsync", synced=self.synced, unsynced=len(self.data) - self.synced)

    def power_cut(self) -> None:
        """Lose every unsynced byte, except maybe a random prefix of them (torn tail)."""
        unsynced = len(self.data) - self.synced
        kept = 0
        if unsynced and self.rng.random() < self.faults.keep_unsynced:
            kept = self.rng.randint(0, unsynced)
        del self.data[self.synced + kept :]
        self.synced = len(self.data)
        self._late = False
        self.generation += 1
        self.version += 1
        self.rewrites += 1
        self.trace.record("power_cut", lost=unsynced - kept, kept=kept)


class SimStorage:
    """One process's open log file on a SimDisk (implements `papaya_trio.storage.Storage`)."""

    def __init__(self, disk: SimDisk, generation: int) -> None:
        self._disk = disk
        self._generation = generation

    async def _io(self, latency: tuple[float, float]) -> SimDisk:
        """Take the operation's time; fail if the power was cut since this handle opened."""
        disk = self._disk
        await trio.sleep(disk.rng.uniform(*latency))
        if disk.generation != self._generation:
            raise OSError(errno.EIO, "the simulated server lost power")
        return disk

    async def size(self) -> int:
        disk = await self._io(NO_LATENCY)
        return len(disk.data)

    async def read(self, offset: int, length: int) -> bytes:
        disk = await self._io(self._disk.faults.write_latency)
        return bytes(disk.data[offset : offset + length])

    async def append(self, data: bytes) -> None:
        disk = await self._io(self._disk.faults.write_latency)
        if disk.rng.random() < disk.faults.write_failure:
            written = disk.rng.randint(0, len(data) - 1)
            disk.data += data[:written]
            disk.version += 1
            disk.trace.record("disk_full", wrote=written, of=len(data))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        disk.trace.record("append", at=len(disk.data), size=len(data))
        disk.data += data
        disk.version += 1

    async def truncate(self, size: int) -> None:
        disk = await self._io(NO_LATENCY)
        disk.trace.record("truncate", size=size, cut=len(disk.data) - size)
        del disk.data[size:]
        disk.synced = min(disk.synced, size)
        disk.version += 1
        disk.rewrites += 1

    async def sync(self) -> None:
        # An fsync makes durable what was written when it began; bytes written while it runs
        # wait for the next one (a group commit that counts them as synced is a bug).
        covered = len(self._disk.data)
        disk = await self._io(self._disk.faults.sync_latency)
        if disk.kill_now(covered):
            disk = await self._io(KILL_GRACE)  # the power is cut meanwhile: EIO
        if disk.rng.random() < disk.faults.sync_failure:
            disk.trace.record("fsync_failed", unsynced=len(disk.data) - disk.synced)
            disk.sync_failures += 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        disk.mark_synced(covered)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
