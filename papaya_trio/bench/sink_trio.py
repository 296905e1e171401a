"""The trio sink: one trio task per connection, like the paper's Go server.

Three variants, kept side by side for the before/after figures of docs/benchmarks.md. All
read every byte and write it with one `os.write` per read, as the fork sink does.

- ``naive``: the 15-line version, `trio.SocketStream.receive_some` then `os.write`.
- ``tuned``: less overhead per wakeup and no added latency: every connection task waits
  with `trio.lowlevel.wait_readable` on a plain non-blocking socket, reads with
  `recv_into` into a buffer shared by all tasks, and writes that memoryview. Sharing one
  buffer is safe because no task reaches a checkpoint between its read and its write, so
  no other task can run in between.
- ``batched``: the tuned task loop, woken by a *readiness poller* (like Go's netpoller)
  that coalesces wakeups while traffic is dense: when a pass over the ready sockets found
  several, or came within one `--coalesce` window (default 5 ms) of the previous pass, the
  next pass waits for the window to fill, and wakes all the ready tasks in one scheduler
  pass, so one process wakeup serves many connections. A byte can wait up to that window
  before it is read. Sparse traffic (one socket ready, arrivals further apart than the
  window) is served at once, so a quiet sink pays no timer wakeups.

Bounds: at most `--max-connections` accepts; everything is cancelled after `--lifetime`.
Run: ``python -m papaya_trio.bench.sink_trio --variant tuned --port 0 > /dev/null``; the
first stderr line gives the port.
"""

from __future__ import annotations

import argparse
import math
import select
import socket
import sys
from collections.abc import Callable, Sequence
from functools import partial

import trio

from papaya_trio.bench.sink_common import (
    HOST,
    STDOUT_FD,
    SinkOptions,
    announce,
    parse_options,
    write_all,
)

VARIANTS = ("naive", "tuned", "batched")
DEFAULT_COALESCE = 0.005


async def _serve_naive_connection(stream: trio.SocketStream, recv_size: int) -> None:
    async with stream:
        while data := await stream.receive_some(recv_size):
            write_all(STDOUT_FD, data)


async def serve_naive(
    options: SinkOptions, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """The naive sink: trio's high-level streams, one task per connection."""
    listeners = await trio.open_tcp_listeners(options.port, host=HOST)
    (listener,) = listeners
    async with listener, trio.open_nursery() as nursery:
        task_status.started(listener.socket.getsockname()[1])
        for _ in range(options.max_connections):
            stream = await listener.accept()
            nursery.start_soon(_serve_naive_connection, stream, options.recv_size)


async def _serve_tuned_connection(conn: socket.socket, buffer: bytearray) -> None:
    view = memoryview(buffer)
    size = len(buffer)
    try:
        while True:
            # wait_readable is this loop's only checkpoint: one trip through the scheduler
            # per wakeup, where receive_some takes two (a wait and a schedule point) plus a
            # recv that fails with EAGAIN before every wait.
            await trio.lowlevel.wait_readable(conn)
            try:
                received = conn.recv_into(buffer)
            except BlockingIOError:
                continue
            if not received:
                return
            write_all(STDOUT_FD, view[:received])
            # A full buffer means more may be queued: read it before waiting again.
            while received == size:
                try:
                    received = conn.recv_into(buffer)
                except BlockingIOError:
                    break
                if not received:
                    return
                write_all(STDOUT_FD, view[:received])
    finally:
        trio.lowlevel.notify_closing(conn)
        conn.close()


async def _accept_each(
    lsock: socket.socket, limit: int, serve: Callable[[socket.socket], None]
) -> None:
    """Accept up to `limit` connections on the non-blocking `lsock`, handing each to `serve`."""
    for _ in range(limit):
        await trio.lowlevel.wait_readable(lsock)
        try:
            conn, _address = lsock.accept()
        except BlockingIOError:
            continue
        conn.setblocking(False)
        serve(conn)


async def serve_tuned(
    options: SinkOptions, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """The tuned sink: raw non-blocking sockets, one task per connection, a shared buffer."""
    shared_buffer = bytearray(options.recv_size)
    lsock = socket.create_server((HOST, options.port), backlog=options.max_connections)
    lsock.setblocking(False)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(lsock.getsockname()[1])
            await _accept_each(
                lsock,
                options.max_connections,
                lambda conn: nursery.start_soon(_serve_tuned_connection, conn, shared_buffer),
            )
    finally:
        trio.lowlevel.notify_closing(lsock)
        lsock.close()


class _Parked:
    """A connection task parked until the poller sees its socket readable."""

    __slots__ = ("task", "waiting")

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.waiting = False


class ReadinessPoller:
    """Wakes connection tasks in batches, from one edge-triggered epoll set.

    Each socket is registered once (EPOLLET), so a wakeup costs no epoll_ctl call; a task
    that reads less than a full buffer has drained its socket, and the next arrival is a
    new edge. Single-threaded: a task cannot be between its last read and parking when
    the poller runs, so no edge is lost.
    """

    def __init__(self, coalesce: float) -> None:
        self._epoll = select.epoll()
        self._parked: dict[int, _Parked] = {}
        self._coalesce = coalesce

    def register(self, fd: int, parked: _Parked) -> None:
        """Watch `fd` for its task."""
        self._parked[fd] = parked
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLET)

    def unregister(self, fd: int) -> None:
        """Stop watching `fd` (before it is closed)."""
        self._epoll.unregister(fd)
        del self._parked[fd]

    async def serve(self) -> None:
        """Run until cancelled; closes the epoll set on the way out."""
        coalesce = False
        last_pass = -math.inf
        try:
            while True:
                if coalesce:
                    await trio.sleep_until(last_pass + self._coalesce)
                else:
                    await trio.lowlevel.wait_readable(self._epoll.fileno())
                now = trio.current_time()
                events = self._epoll.poll(0, max(1, len(self._parked)))
                coalesce = dense(len(events), now - last_pass, self._coalesce)
                last_pass = now
                for fd, _flags in events:
                    parked = self._parked.get(fd)
                    if parked is not None and parked.waiting:
                        parked.waiting = False
                        trio.lowlevel.reschedule(parked.task)
        finally:
            self._epoll.close()


def dense(ready: int, since_last_pass: float, window: float) -> bool:
    """Whether traffic is dense enough for the poller to wait out a window before its next pass.

    Dense: this pass found several sockets ready, or found one within `window` seconds of
    the previous pass. Otherwise (nothing ready, or one arrival after a quiet spell) the
    poller blocks until the next arrival and serves it at once.
    """
    return window > 0 and (ready > 1 or (ready == 1 and since_last_pass < window))


async def _serve_batched_connection(
    conn: socket.socket, buffer: bytearray, poller: ReadinessPoller
) -> None:
    view = memoryview(buffer)
    size = len(buffer)
    fd = conn.fileno()
    parked = _Parked(trio.lowlevel.current_task())

    def abort(_raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        parked.waiting = False
        return trio.lowlevel.Abort.SUCCEEDED

    poller.register(fd, parked)
    try:
        while True:
            try:
                received = conn.recv_into(buffer)
            except BlockingIOError:
                received = -1
            if received == 0:
                return
            if received > 0:
                write_all(STDOUT_FD, view[:received])
                if received == size:
                    continue
            # Drained: park until the poller sees a new edge on this socket.
            parked.waiting = True
            await trio.lowlevel.wait_task_rescheduled(abort)
    finally:
        poller.unregister(fd)
        conn.close()


async def serve_batched(
    options: SinkOptions,
    coalesce: float = DEFAULT_COALESCE,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The batched sink: tuned tasks woken in batches by a `ReadinessPoller`."""
    shared_buffer = bytearray(options.recv_size)
    poller = ReadinessPoller(coalesce)
    lsock = socket.create_server((HOST, options.port), backlog=options.max_connections)
    lsock.setblocking(False)
    try:
        async with trio.open_nursery() as outer:
            outer.start_soon(poller.serve)
            async with trio.open_nursery() as connections:
                task_status.started(lsock.getsockname()[1])
                await _accept_each(
                    lsock,
                    options.max_connections,
                    lambda conn: connections.start_soon(
                        _serve_batched_connection, conn, shared_buffer, poller
                    ),
                )
            # Every connection was accepted and has ended: the poller has nothing to do.
            outer.cancel_scope.cancel()
    finally:
        trio.lowlevel.notify_closing(lsock)
        lsock.close()


async def _main(variant: str, coalesce: float, options: SinkOptions) -> None:
    if variant == "naive":
        serve = partial(serve_naive, options)
    elif variant == "tuned":
        serve = partial(serve_tuned, options)
    else:
        serve = partial(serve_batched, options, coalesce)
    with trio.move_on_after(options.lifetime):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve)
            announce(port)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``--variant``, ``--coalesce`` and the options common to both sinks."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--variant", choices=VARIANTS, default="tuned")
    pre.add_argument("--coalesce", type=float, default=DEFAULT_COALESCE)
    known, rest = pre.parse_known_args(argv)
    if known.coalesce < 0:
        pre.error("--coalesce can't be negative")
    options = parse_options(f"trio sink ({known.variant}): one task per connection", rest)
    trio.run(_main, known.variant, known.coalesce, options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
