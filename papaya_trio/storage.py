"""Where the log's bytes live: a real file, or memory (tests and the simulation).

The storage is deliberately dumb (append, read, truncate, sync); the rules about records, locks
and durability live in `chatlog`. Every method is async so a simulated storage can take
simulated time and inject faults; the file storage does its reads and writes inline (they hit
the page cache) and only `fsync` goes to a worker thread.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Protocol

import trio


class Storage(Protocol):
    """The byte store under a ChatLog."""

    async def size(self) -> int:
        """Current length in bytes."""
        ...

    async def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes from `offset` (fewer only at the end)."""
        ...

    async def append(self, data: bytes) -> None:
        """Append all of `data`; raise OSError on failure (part of it may have been written)."""
        ...

    async def truncate(self, size: int) -> None:
        """Cut the store back to `size` bytes."""
        ...

    async def sync(self) -> None:
        """Make everything appended so far durable; raise OSError on failure."""
        ...

    async def aclose(self) -> None:
        """Release the store."""
        ...


class FileStorage:
    """The log file, opened with O_APPEND; each append holds flock(LOCK_EX).

    The flock lets fork-mode processes, each with its own open file description, append to the
    same file without interleaving.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    async def size(self) -> int:
        return os.fstat(self._fd).st_size

    async def read(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    async def append(self, data: bytes) -> None:
        await self._lock(fcntl.LOCK_EX)
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    async def truncate(self, size: int) -> None:
        await self._lock(fcntl.LOCK_EX)
        try:
            os.ftruncate(self._fd, size)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    async def sync(self) -> None:
        await trio.to_thread.run_sync(os.fsync, self._fd)

    async def aclose(self) -> None:
        os.close(self._fd)

    async def _lock(self, operation: int) -> None:
        try:
            fcntl.flock(self._fd, operation | fcntl.LOCK_NB)
        except BlockingIOError:
            # Another process (fork mode) holds it: wait in a thread, not in the event loop.
            await trio.to_thread.run_sync(fcntl.flock, self._fd, operation)


class MemoryStorage:
    """An in-memory store that remembers which bytes were synced.

    `after_crash()` returns what a disk would hold after a power cut: only the synced bytes.
    """

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)
        self.synced = len(data)

    async def size(self) -> int:
        await trio.lowlevel.checkpoint()
        return len(self.data)

    async def read(self, offset: int, length: int) -> bytes:
        await trio.lowlevel.checkpoint()
        return bytes(self.data[offset : offset + length])

    async def append(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.data += data

    async def truncate(self, size: int) -> None:
        await trio.lowlevel.checkpoint()
        del self.data[size:]
        self.synced = min(self.synced, size)

    async def sync(self) -> None:
        await trio.lowlevel.checkpoint()
        self.synced = len(self.data)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()

    def after_crash(self) -> MemoryStorage:
        """The store as a restarted server would find it: unsynced bytes are gone."""
        return MemoryStorage(bytes(self.data[: self.synced]))
