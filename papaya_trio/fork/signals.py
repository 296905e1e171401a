"""Signals as readable state: the self-pipe trick, so every wait can also wake for them.

Each fork-mode process waits in `poll()` and never in a signal handler. `SignalWatch` installs a
handler that does nothing and points `signal.set_wakeup_fd` at a non-blocking pipe: the
interpreter's C-level handler writes the signal's number into that pipe the moment the signal
arrives, so a signal that arrives before or during a `poll()` makes the pipe readable and the
poll returns. The numbers are read from the pipe itself (`take`), not from state set by the
Python-level handler, which may run a few bytecodes later than the poll returns.

Forking: a child must not report its signals into its parent's pipe, nor lose a signal that
arrives between `fork()` and installing its own watch. `forking_safely` blocks the watched
signals around the fork; the child (`become_child`) closes its parent's descriptors, installs
its watch, then unblocks them, and any signal that arrived meanwhile is delivered to the new
watch. The child closes before it opens anything: the parent may have been at its descriptor
limit, and the child's copy of the table is just as full.

Dying with the parent: every child asks the kernel for SIGKILL when its parent ends
(`die_with_parent`, Linux's PR_SET_PDEATHSIG), then checks that the parent is still the one it
was forked by, which closes the race with a parent that died before the request. SIGKILL and
not SIGTERM: once the parent is gone a restarted server may already own the data folder, and a
child must not append another buffered line to its log. The child's client sees its connection
closed, as after any crash of the server.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from types import FrameType

# SIGHUP: the service manager's reload (trio mode re-reads TLS files); its default would kill.
WATCHED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP})
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
DRAIN_BYTES = 4096
MAX_DRAIN_READS = 16
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """The Python-level handler: the wakeup pipe already recorded the signal."""


class SignalWatch:
    """Records the given signals in a pipe that `poll()` can wait on."""

    def __init__(self, signums: Iterable[int]) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.stop_requested = False
        self.received: set[int] = set()
        for signum in signums:
            signal.signal(signum, _ignore)
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)

    def fileno(self) -> int:
        """The pipe's read end, readable while signals are waiting to be taken."""
        return self._read

    def take(self) -> set[int]:
        """The signals that arrived since the last call (also noting stop requests)."""
        arrived: set[int] = set()
        for _ in range(MAX_DRAIN_READS):
            try:
                data = os.read(self._read, DRAIN_BYTES)
            except BlockingIOError:
                break
            arrived.update(data)
            if len(data) < DRAIN_BYTES:
                break
        if arrived & STOP_SIGNALS:
            self.stop_requested = True
        self.received |= arrived
        return arrived

    def close_in_child(self) -> None:
        """Close the parent's pipe in a forked child (after the child installed its own)."""
        os.close(self._read)
        os.close(self._write)


@contextmanager
def forking_safely() -> Iterator[None]:
    """Block the watched signals for the `with` block (wrap `os.fork()` and the bookkeeping)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WATCHED)


def become_child(inherited: SignalWatch, parent_pid: int, close: Iterable[int]) -> SignalWatch:
    """In a freshly forked child, watched signals still blocked (`forking_safely`): die with
    the parent, close the parent's descriptors `close` and signal pipe, install an own watch
    with default SIGCHLD, then unblock the watched signals."""
    die_with_parent(parent_pid)
    close_quietly(close)
    inherited.close_in_child()  # no handler can write to it: the signals are blocked
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    watch = SignalWatch(STOP_SIGNALS)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WATCHED)
    return watch


def die_with_parent(parent_pid: int) -> None:
    """In a freshly forked child: be SIGKILLed when the parent ends (Linux), and end at once if
    it already has (the child was re-parented before the request took effect)."""
    if _LIBC is not None and _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os._exit(1)


def close_quietly(fds: Iterable[int]) -> None:
    """Close descriptors a child inherited but must not keep (ignoring ones already closed)."""
    for fd in fds:
        with suppress(OSError):
            os.close(fd)
