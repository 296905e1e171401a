"""The server's exclusive hold on its log: an open-file-description lock on ``chat.log`` itself.

One server per log at a time. The lock is ``fcntl(F_OFD_SETLK, F_WRLCK)`` over the whole of
``chat.log``, taken through a descriptor of its own. It lives on the log's inode, so there is no
separate lock file that somebody could delete as "stale" to let a second server in: as long as
the first server runs, anybody who opens ``chat.log`` (the same file) is refused. It is released
when the last descriptor of that open file description closes, so a killed server never leaves
a stale lock behind.

Why OFD locks and not ``flock``: the log's writers and readers already use ``flock`` on the log
(``LOCK_EX`` per append, ``LOCK_SH`` to read a consistent end, see docs/log-format.md), and on
Linux ``flock`` and ``fcntl`` locks are independent, so this lock orders servers without getting
in the way of appends. Unlike classic POSIX record locks (``lockf``), an OFD lock belongs to the
open file description, not to the process: closing some other descriptor of the same file (a
scan, a backup) does not drop it, and a forked child that inherits the descriptor shares it
(fork mode closes it in every child, as it did with the old lock file).
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# struct flock on Linux: l_type, l_whence (short), l_start, l_len (off_t), l_pid (pid_t), padded.
_FLOCK = "hhqqi4x"


class LogInUse(Exception):
    """Another process (a running server, a repair) holds the log."""


def try_lock(fd: int, path: Path) -> None:
    """Take the exclusive OFD lock on the whole file behind `fd`, or raise LogInUse."""
    request = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
    except (BlockingIOError, PermissionError):
        raise LogInUse(f"another server (or a log repair) is using {path}") from None


@contextmanager
def held_log(path: Path) -> Iterator[int]:
    """Open (creating, owner-only) and exclusively lock the log at `path` for the block.

    Yields the lock's descriptor (keep it open, and out of forked children, for as long as the
    lock must hold). Raises LogInUse if another process holds it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try_lock(fd, path)
        yield fd
    finally:
        os.close(fd)
