"""What the fork-mode parent does when it must not, or cannot, fork for a connection.

Theory of operation
-------------------
A process per connection is fork mode's whole cost, so the parent decides before forking:

- **Over the limit** (``max_connections`` connection processes alive): the connection gets no
  process. `Refusals` keeps its socket in the parent's own ``poll()`` for at most
  ``papaya_auth_timeout`` (a papayaChat client's key is due by then, and a native client sends
  its hello at once) and looks at the first byte without taking it (``MSG_PEEK``): ``{`` is
  the native dialect, which gets trio mode's ``server_full`` error line; anything else, or
  silence, is closed without a word, as papayaChat refuses. At most MAX_REFUSALS sockets wait
  at once; a new one pushes out the one that has waited longest. The parent never blocks on a
  refused socket: the error line is one non-blocking send into an empty send buffer, and what
  the client sent is read away before closing, so the close is a FIN and not a reset that
  could overtake the line.
- **Out of resources**: ``accept`` failing with EMFILE, ENFILE, ENOBUFS or ENOMEM, the wake
  pipe's ``pipe2`` with EMFILE or ENFILE, or ``fork`` with EAGAIN or ENOMEM. `Exhaustion` logs
  the first failure of an episode (not every attempt), closes a connection that was already
  accepted, and makes the parent stop accepting for BACKOFF seconds: the listeners leave the
  poll set and the poll timeout brings them back, so the parent neither spins nor sleeps
  through the other work of its loop (wake-ups, reaping, signals). A child that ends frees
  descriptors and a process slot, so reaping one ends the pause early. The first connection
  that gets its process again ends the episode with one line saying how many were turned away.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections import OrderedDict
from contextlib import suppress
from dataclasses import dataclass

from papaya_trio.protocol.events import Error
from papaya_trio.protocol.native import encode_line

logger = logging.getLogger(__name__)

MAX_REFUSALS = 64  # refused sockets waiting for their first byte at once
DRAIN_READS = 4  # reads of what a refused client sent, so that closing sends a FIN
DRAIN_BYTES = 64 * 1024
BACKOFF = 0.1  # seconds without accepting after a resource failure
EXHAUSTION_ERRORS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EAGAIN}
)
SERVER_FULL = encode_line(Error("server_full", "the server is full", fatal=True))


@dataclass(slots=True)
class _Waiting:
    sock: socket.socket
    label: str
    deadline: float


class Refusals:
    """Connections over the limit, each waiting (bounded) for its first byte in the parent."""

    def __init__(self, wait: float) -> None:
        self._wait = wait
        self._waiting: OrderedDict[int, _Waiting] = OrderedDict()  # by descriptor, oldest first

    def __len__(self) -> int:
        return len(self._waiting)

    def fds(self) -> list[int]:
        """The refused sockets' descriptors (to poll for input, and for children to close)."""
        return list(self._waiting)

    def add(self, sock: socket.socket, label: str, now: float) -> None:
        """Take a refused connection (pushing out the oldest one if MAX_REFUSALS wait)."""
        if len(self._waiting) >= MAX_REFUSALS:
            _, oldest = self._waiting.popitem(last=False)
            oldest.sock.close()
        sock.setblocking(False)
        self._waiting[sock.fileno()] = _Waiting(sock, label, now + self._wait)

    def timeout(self, now: float) -> float | None:
        """Seconds until the oldest refused socket's wait ends; None if none waits."""
        for waiting in self._waiting.values():
            return max(0.0, waiting.deadline - now)
        return None

    def answer(self, fd: int) -> None:
        """The refused socket `fd` is readable: refuse it in its dialect and close it."""
        waiting = self._waiting.pop(fd)
        try:
            first = waiting.sock.recv(1, socket.MSG_PEEK)
        except OSError:
            first = b""
        if first == b"{":
            logger.warning("%s native: refused: server full", waiting.label)
            # OSError: gone already, or (never with an empty buffer) no room: just close
            with suppress(OSError):
                waiting.sock.send(SERVER_FULL, socket.MSG_NOSIGNAL)
        elif first:
            logger.warning("%s papaya: refused: server full", waiting.label)
        close_gently(waiting.sock)

    def expire(self, now: float) -> None:
        """Close the refused sockets that stayed silent too long (oldest first)."""
        while self._waiting:
            fd, waiting = next(iter(self._waiting.items()))
            if waiting.deadline > now:
                return
            del self._waiting[fd]
            waiting.sock.close()

    def close_all(self) -> None:
        """Close every waiting socket (shutdown)."""
        for waiting in self._waiting.values():
            waiting.sock.close()
        self._waiting.clear()


def close_gently(sock: socket.socket) -> None:
    """Read away what the client sent (bounded, never blocking), then close."""
    for _ in range(DRAIN_READS):
        try:
            if len(sock.recv(DRAIN_BYTES)) < DRAIN_BYTES:
                break
        except OSError:
            break
    sock.close()


class Exhaustion:
    """Resource failures while taking connections: one log line per episode, and a pause."""

    def __init__(self) -> None:
        self._refused = 0  # connections turned away in this episode; 0: no episode
        self._resume_at = 0.0

    def failed(self, doing: str, exc: OSError, now: float) -> None:
        """`doing` failed with a resource error: pause accepting (log if a new episode)."""
        if not self._refused:
            logger.error(
                "%s failed: %s; turning connections away and retrying every %.1f s",
                doing,
                exc.strerror or exc,
                BACKOFF,
            )
        self._refused += 1
        self._resume_at = now + BACKOFF

    def spawned(self) -> None:
        """A connection got its process: the episode, if any, is over."""
        if self._refused:
            logger.warning("serving again after %d failed attempts", self._refused)
            self._refused = 0

    def relieved(self) -> None:
        """A child ended (descriptors and a process slot are free): stop pausing."""
        self._resume_at = 0.0

    def pause(self, now: float) -> float | None:
        """Seconds left in the pause; None if the parent may accept."""
        left = self._resume_at - now
        return left if left > 0 else None
