"""The client's socket as one process of a pair uses it: `poll()` waits with deadlines.

RECV and SEND share the socket's open file description, so neither may switch it to
non-blocking mode (that flag would change the other's calls too). The descriptor stays
blocking; every call passes MSG_DONTWAIT after `poll()` said it is ready, so a process is never
stuck in a socket call where it could not notice a signal, a deadline or its partner's end.
Socket errors become PeerGone here and nowhere else.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterable

from papaya_trio.fork.signals import SignalWatch
from papaya_trio.peer import PeerGone
from papaya_trio.protocol.decoding import NEED_DATA, LineDecoder, NeedData
from papaya_trio.protocol.events import ClientEvent

RECEIVE_BYTES = 64 * 1024
READ_EVENTS = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR


class Stopped(Exception):
    """A stop signal (SIGTERM, SIGINT) arrived while waiting."""


class Expired(Exception):
    """The deadline passed while waiting."""


class Connection:
    """A connected socket plus this process's signal watch."""

    def __init__(self, sock: socket.socket, signals: SignalWatch, label: str) -> None:
        sock.setblocking(True)
        self.sock = sock
        self.signals = signals
        self.label = label

    def wait(
        self,
        readable: Iterable[int] = (),
        writable: Iterable[int] = (),
        timeout: float | None = None,
        *,
        stoppable: bool = True,
    ) -> set[int]:
        """Wait until a descriptor is ready or `timeout` seconds pass; return the ready ones.

        If `stoppable`, raises Stopped as soon as a stop signal has arrived (before waiting, too).
        """
        poller = self._poller(readable)
        for fd in writable:
            poller.register(fd, select.POLLOUT | select.POLLHUP | select.POLLERR)
        return self._poll(poller, timeout, stoppable=stoppable)

    def watch(self, readable: Iterable[int]) -> Watch:
        """A poll set for a loop that waits for the same descriptors (and signals) each time."""
        return Watch(self, self._poller(readable))

    def _poller(self, readable: Iterable[int]) -> select.poll:
        poller = select.poll()
        poller.register(self.signals.fileno(), select.POLLIN)
        for fd in readable:
            poller.register(fd, READ_EVENTS)
        return poller

    def _poll(self, poller: select.poll, timeout: float | None, *, stoppable: bool) -> set[int]:
        if stoppable and self.signals.stop_requested:
            raise Stopped
        ready = {fd for fd, _ in poller.poll(None if timeout is None else max(0, timeout) * 1000)}
        if self.signals.fileno() in ready:
            self.signals.take()
            ready.discard(self.signals.fileno())
            if stoppable and self.signals.stop_requested:
                raise Stopped
        return ready

    def raise_if_stopped(self) -> None:
        """Raise Stopped if a stop signal has arrived, even one whose byte reached the signal
        pipe only after a `poll()` had already returned for another descriptor."""
        self.signals.take()
        if self.signals.stop_requested:
            raise Stopped

    def receive(self, deadline: float | None, also: Iterable[int] = ()) -> bytes | set[int]:
        """Bytes from the client (b"" at end of stream), or the set of `also` descriptors that
        became readable first. Raises Expired at `deadline` (time.monotonic()), Stopped on a
        stop signal, PeerGone if the connection broke."""
        watched = [self.sock.fileno(), *also]
        while True:
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise Expired
            ready = self.wait(watched, timeout=timeout)
            if self.sock.fileno() in ready:
                try:
                    return self.sock.recv(RECEIVE_BYTES, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise PeerGone(str(exc)) from exc
            if ready:
                return ready

    def send_now(self, data: memoryview) -> int:
        """Write what the socket takes without waiting (0 if nothing): a client that keeps up
        has room, so its writes need no `poll()` first."""
        try:
            return self.sock.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise PeerGone(str(exc)) from exc

    def send_some(self, data: memoryview, timeout: float, *, stoppable: bool = True) -> int:
        """Write what the socket takes now (waiting at most `timeout`); 0 if nothing was."""
        ready = self.wait(writable=[self.sock.fileno()], timeout=timeout, stoppable=stoppable)
        return self.send_now(data) if ready else 0

    def send_all(self, data: bytes, deadline: float) -> None:
        """Write all of `data` by `deadline` (even after a stop signal: used for goodbyes);
        raises Expired or PeerGone."""
        view = memoryview(data)
        while view:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise Expired
            view = view[self.send_some(view, timeout, stoppable=False) :]


class Watch:
    """`Connection.watch`: the poll set is registered once, not at every wait."""

    def __init__(self, conn: Connection, poller: select.poll) -> None:
        self._conn = conn
        self._poller = poller

    def wait(self) -> set[int]:
        """Like `Connection.wait` without a timeout: the ready descriptors; Stopped on a stop."""
        return self._conn._poll(self._poller, None, stoppable=True)


def read_event(
    conn: Connection, decoder: LineDecoder, deadline: float | None, also: Iterable[int] = ()
) -> ClientEvent | set[int]:
    """The client's next event, reading as needed; or the `also` descriptors that became
    readable first. Raises like `Connection.receive`."""
    while (event := decoder.next_event()) is NEED_DATA:
        data = conn.receive(deadline, also)
        if isinstance(data, set):
            return data
        decoder.receive_data(data)
    assert not isinstance(event, NeedData)
    return event
