"""The fork-mode parent's metrics listener, served from its `poll()` loop without blocking.

Theory of operation
-------------------
Fork mode has no HTTP port, and its parent is a `poll()` loop that must never block. With
`metrics = "HOST:PORT"` the parent also listens there and exports what it knows itself
(`FORK_METRICS`, a subset of trio mode's names): the connection processes alive, connections
refused over `max_connections`, and the log's size in messages and bytes. What the connection
processes do (appends, deliveries, bytes, fsync times) happens in processes of their own and
is not exported; `rate(papaya_log_messages[5m])` is the message rate all the same.

`Scrapes` takes each connection to that listener non-blocking and keeps it in the parent's
poll set until its request head is complete (parsed by h11, at most MAX_REQUEST_HEAD bytes)
or SCRAPE_TIMEOUT has passed. The answer, a few kilobytes, is one non-blocking send into the
socket's empty send buffer; then what the client still sent is read away (bounded) and the
socket closed, so that the close is a FIN and not a reset that could overtake the answer. At
most MAX_SCRAPES wait at once: a newcomer past that is closed at once, so a flood there costs
the parent nothing but accepts.
"""

from __future__ import annotations

import socket
from contextlib import suppress
from dataclasses import dataclass

import h11

from papaya_trio.fork.overload import close_gently
from papaya_trio.metrics import Metrics
from papaya_trio.transports.http import MAX_REQUEST_HEAD, metrics_response
from papaya_trio.transports.static import Response, render

#: The samples fork mode exports (see the module docstring).
FORK_METRICS = frozenset(
    {
        "papaya_open_connections",
        "papaya_handshakes_refused_total",
        "papaya_log_messages",
        "papaya_log_bytes",
    }
)
MAX_SCRAPES = 8
SCRAPE_TIMEOUT = 10.0
RECEIVE_BYTES = 16 * 1024
ACCEPT_BATCH = 16
NOT_FOUND = Response(404, "text/plain; charset=utf-8", b"only /metrics here\n")


@dataclass(slots=True)
class _Scrape:
    sock: socket.socket
    conn: h11.Connection
    deadline: float


class Scrapes:
    """The metrics listener's sockets and the scrapes waiting for their request."""

    def __init__(self, listeners: list[socket.socket], metrics: Metrics) -> None:
        self.listeners = listeners
        self.metrics = metrics
        self._waiting: dict[int, _Scrape] = {}  # by descriptor, oldest first
        for listener in listeners:
            listener.setblocking(False)

    def fds(self) -> list[int]:
        """Every descriptor to poll for input (and for children to close)."""
        return [listener.fileno() for listener in self.listeners] + list(self._waiting)

    def timeout(self, now: float) -> float | None:
        """Seconds until the oldest waiting scrape times out; None if none waits."""
        for scrape in self._waiting.values():
            return max(0.0, scrape.deadline - now)
        return None

    def handle(self, ready: set[int], now: float) -> None:
        """Accept on ready listeners, read from ready scrapes, drop the ones past their time."""
        for listener in self.listeners:
            if listener.fileno() in ready:
                self._accept(listener, now)
        for fd in ready.intersection(self._waiting):
            self._read(fd)
        for fd, scrape in list(self._waiting.items()):
            if scrape.deadline <= now:
                del self._waiting[fd]
                scrape.sock.close()

    def close_all(self) -> None:
        """Close the listeners and every waiting scrape (shutdown)."""
        for scrape in self._waiting.values():
            scrape.sock.close()
        self._waiting.clear()
        for listener in self.listeners:
            listener.close()

    def _accept(self, listener: socket.socket, now: float) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = listener.accept()
            except OSError:  # nothing more to accept now (or out of descriptors: retry later)
                return
            if len(self._waiting) >= MAX_SCRAPES:
                sock.close()
                continue
            sock.setblocking(False)
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
            self._waiting[sock.fileno()] = _Scrape(sock, conn, now + SCRAPE_TIMEOUT)

    def _read(self, fd: int) -> None:
        scrape = self._waiting[fd]
        try:
            data = scrape.sock.recv(RECEIVE_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        scrape.conn.receive_data(data)
        try:
            event = scrape.conn.next_event()
        except h11.RemoteProtocolError as exc:
            self._finish(fd, Response(exc.error_status_hint, "text/plain", b"bad request\n"))
            return
        if isinstance(event, h11.Request):
            self._finish(fd, metrics_response(self.metrics, event) or NOT_FOUND)
        elif event is not h11.NEED_DATA:  # the client closed before a whole request
            del self._waiting[fd]
            scrape.sock.close()

    def _finish(self, fd: int, response: Response) -> None:
        scrape = self._waiting.pop(fd)
        with suppress(OSError, h11.LocalProtocolError):  # best effort, like every refusal
            scrape.sock.send(render(scrape.conn, response), socket.MSG_NOSIGNAL)
        close_gently(scrape.sock)  # a reset could overtake the answer
