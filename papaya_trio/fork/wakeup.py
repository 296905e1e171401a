"""Waking every SEND process after an append: pipes, with the parent as the broadcaster.

Theory of operation
-------------------
- Every RECV holds the write end of one *notify* pipe; only the parent holds its read end.
  After an append is complete (written and, with ``fsync = "always"``, covered by a finished
  fsync: see `logfile`), the RECV pokes it: one byte.
- For every connection the parent creates a *wake* pipe before it forks the connection's
  process; the parent keeps the write end, the client's SEND gets the read end. Whenever the
  notify pipe is readable the parent empties it and pokes every wake pipe.
- SEND waits in ``poll()`` on its wake pipe (and on its RECV's reply pipe and its signal
  pipe). When it wakes it first empties its wake pipe, *then* reads the log from its own
  cursor to the end of the file.

Why no wake-up is lost: a byte in a pipe is state, not an event. The original slept in
``pause()`` and a ``SIGUSR1`` that arrived while its SEND was busy writing was handled then and
there, so the following ``pause()`` slept through the news. A byte written while SEND is busy
stays in the pipe, and ``poll()`` returns at once when a byte is already there. Because SEND
empties the pipe *before* reading the log, every append it has not read was followed by a
poke it has not consumed yet, so its next ``poll()`` returns. The same argument holds one hop
earlier for the notify pipe and the parent. All pokes are non-blocking: a full pipe means
bytes are already waiting, so dropping one more loses nothing (the argument trio mode's
broadcaster makes for its bounded outboxes).

Why no partial drain: a wake-up carries no data. SEND reads the log itself, in bounded chunks,
until the end of the file, however much arrived (the original sent at most 4096 bytes per
signal and left the rest until somebody wrote again).

Why not signals or eventfd: a blocking signal wait (``sigwaitinfo`` with the signal masked) is
race-free too, but SEND must also wake for its RECV's replies and for shutdown, and signalling
"every SEND" needs a process group holding exactly the SEND processes. An eventfd is consumed
by whoever reads it, so each SEND needs its own anyway, and a RECV forked earlier cannot learn
the descriptors of clients that connect later without passing them over a Unix socket. With the
parent as the hub each process only uses descriptors that exist when it is forked, at the cost
of one extra hop (and one write per client per append in the parent).
"""

from __future__ import annotations

import os

POKE = b"\x01"
DRAIN_BYTES = 4096
MAX_DRAIN_READS = 16


def open_wake_pipe() -> tuple[int, int]:
    """A (read end, write end) pair for pokes; both ends non-blocking."""
    return os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)


def poke(fd: int) -> None:
    """Write one wake-up byte; never blocks."""
    try:
        os.write(fd, POKE)
    except BlockingIOError:
        pass  # the pipe is full: wake-ups are already waiting to be read
    except BrokenPipeError:
        pass  # the reader is gone (its process is ending and will be reaped)


def drain(fd: int) -> bool:
    """Empty a wake pipe without blocking; False once every writer has closed it.

    Bounded: bytes left after MAX_DRAIN_READS reads only cause one more (harmless) wake-up.
    """
    for _ in range(MAX_DRAIN_READS):
        try:
            data = os.read(fd, DRAIN_BYTES)
        except BlockingIOError:
            return True
        if not data:
            return False
        if len(data) < DRAIN_BYTES:
            return True
    return True
