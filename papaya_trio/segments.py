"""The log as segments, for retention: ``chat.log`` (the active segment) plus sealed ones.

Theory of operation
-------------------
With a retention option the log is ``chat.log``, the file appends go to, plus sealed segments
beside it, ``segment-<first seq>-<newest record's time in ms>.log`` (the numbers zero-padded so
names sort in log order), each holding whole records, numbered on from the one before. Without
retention there are no sealed segments and ``chat.log`` is the whole log, as it always was: old
logs open unchanged, and a log can move from one to the other in either direction.

Retention never rewrites a file: when ``chat.log`` reaches ``segment_bytes`` it is *sealed*
(renamed, in effect, to a segment name) and a new, empty ``chat.log`` takes its place; trimming
deletes whole sealed segments, oldest first. The active segment is never deleted, so the newest
records (and with them the next sequence number) always survive.

Sealing keeps the server's lock (`loglock`) on whatever ``chat.log`` names at every moment:
the segment name is added as a hard link, a new file is created as ``chat.log.next`` and locked,
then renamed over ``chat.log`` (atomically). A crash between the link and the rename leaves a
segment that is the same file as ``chat.log``; opening removes that link (and any
``chat.log.next``), so no record is ever found twice.

`SegmentedFileStorage` is a `storage.Storage` over one offset space: the kept segments and the
active one, end to end. Offsets stay valid while the server runs (trimming only makes the low
ones unreadable), which is all `ChatLog`'s index needs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from papaya_trio.loglock import try_lock
from papaya_trio.storage import FileStorage

ACTIVE = "chat.log"
NEXT = "chat.log.next"
SEGMENT = re.compile(r"segment-(\d{12})-(\d{15})\.log")


@dataclass(frozen=True, slots=True)
class Segment:
    """A sealed segment: records `first` on, the newest stored at `last_time_ms`."""

    path: Path
    first: int
    last_time_ms: int
    base: int  # its first byte's offset in the log's offset space
    size: int


def segment_name(first: int, last_time_ms: int) -> str:
    """The file name of a sealed segment."""
    return f"segment-{first:012d}-{last_time_ms:015d}.log"


def sealed_segments(folder: Path) -> list[tuple[Path, int, int]]:
    """(path, first seq, newest time) of every sealed segment in `folder`, oldest first."""
    found = []
    for path in folder.iterdir():
        if match := SEGMENT.fullmatch(path.name):
            found.append((path, int(match.group(1)), int(match.group(2))))
    return sorted(found, key=lambda item: item[1])


def fsync_folder(folder: Path) -> None:
    """Make a folder's entries (a new, renamed or deleted file) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentedFileStorage:
    """The active ``chat.log`` and the sealed segments of `folder` (see the module)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        (folder / NEXT).unlink(missing_ok=True)  # a seal that never got to its rename
        active = folder / ACTIVE
        self._active = FileStorage(active)
        inode = os.fstat(self._active._fd).st_ino
        self.sealed: list[Segment] = []
        base = 0
        for path, first, last_time in sealed_segments(folder):
            if path.stat().st_ino == inode:  # a seal that stopped between link and rename
                path.unlink()
                continue
            size = path.stat().st_size
            self.sealed.append(Segment(path, first, last_time, base, size))
            base += size
        self._active_base = base

    @property
    def path(self) -> Path:
        """The active segment's path."""
        return self.folder / ACTIVE

    @property
    def start_offset(self) -> int:
        """The offset of the oldest kept byte."""
        return self.sealed[0].base if self.sealed else self._active_base

    @property
    def active_base(self) -> int:
        """The offset of the active segment's first byte."""
        return self._active_base

    async def size(self) -> int:
        return self._active_base + await self._active.size()

    async def read(self, offset: int, length: int) -> bytes:
        if offset >= self._active_base:
            return await self._active.read(offset - self._active_base, length)
        for segment in self.sealed:
            if segment.base <= offset < segment.base + segment.size:
                fd = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    room = segment.base + segment.size - offset
                    return os.pread(fd, min(length, room), offset - segment.base)
                finally:
                    os.close(fd)
        return b""  # trimmed away

    async def append(self, data: bytes) -> None:
        await self._active.append(data)

    async def truncate(self, size: int) -> None:
        await self._active.truncate(max(0, size - self._active_base))

    async def sync(self) -> None:
        await self._active.sync()

    async def aclose(self) -> None:
        await self._active.aclose()

    async def seal(self, first: int, last_time_ms: int) -> None:
        """Turn the active segment (records `first` on) into a sealed one; start a new one."""
        old = self._active
        size = await old.size()
        await old.sync()
        link = self.folder / segment_name(first, last_time_ms)
        os.link(old.path, link)
        fresh = FileStorage(self.folder / NEXT)
        try:
            try_lock(fresh._fd, self.path)
            os.replace(self.folder / NEXT, self.path)
        except BaseException:
            await fresh.aclose()
            link.unlink()
            raise
        fresh.path = self.path
        fsync_folder(self.folder)
        self.sealed.append(Segment(link, first, last_time_ms, self._active_base, size))
        self._active, self._active_base = fresh, self._active_base + size
        await old.aclose()  # its lock was on the file that is now the sealed segment

    def drop_oldest(self) -> Segment:
        """Delete the oldest sealed segment (there must be one); return it."""
        segment = self.sealed.pop(0)
        segment.path.unlink()
        fsync_folder(self.folder)
        return segment
