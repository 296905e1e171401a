"""The fan-out fast path: new messages rendered once per dialect and written by the
broadcaster straight into the sockets of idle clients, without waking their send tasks.

Theory of operation
-------------------
A client's send task is the only writer of its stream (see `session`). Its usual way to
deliver a message costs, per recipient, a WAKE token, a task switch, a log read, a rendering
and a trio `send_all` with its checkpoints. In a busy room most send tasks are *idle* when a
message arrives: they have written everything up to the log's head and are parked on their
outbox, and their socket has room. For those, the work is one `send` of bytes that are the
same for every client of a dialect.

So an idle send task **lends** its stream to the broadcaster: just before it parks on its
outbox, if its cursor is at the log's head, it hands over a `Lease` (how its dialect renders
live records, and a non-blocking write to its socket). While the loan stands the broadcaster
is the stream's one writer: `Broadcaster.publish` (a plain function: nothing else runs while
it does) renders the new records once per `Lease.kind` and writes those bytes to every lent
stream with one non-blocking write each, and moves each cursor on. No task switch, no
channel, no log read and no rendering per recipient.

Presence and typing notices take the same way: `Session.notify` offers a notice to a lent
stream first (`Subscription.write_now`), so a join in a room of N clients costs N writes of
one cached line rather than N task switches (a notice the socket takes none of is queued for
the send task as before; one it takes in part is finished by the send task, as below).

The loan ends the moment anything else may want to write:

- every `Subscription.wake` revokes it before putting its WAKE token in the outbox (new
  records the broadcaster could not write, presence and typing notices, `close`);
- the send task takes it back (`Subscription.reclaim`) as soon as it resumes from its outbox,
  whatever woke it (an ack, a pong, a history request, FINISH, cancellation), before it
  writes anything.

A write that does not take everything ends the loan too: if the socket took part of the
bytes, the rest goes to the send task with the stream (`Handover`): it writes the rest first,
the normal blocking way, and only then moves its cursor on; if the socket took nothing (its
buffer is full) or failed, nothing changed and the send task is woken to write from its
cursor as usual, meeting any error itself. Hence exactly one party owns a stream at any
moment; the client receives the very bytes, in the same order, that its send task would have
written (the lease renders with the peer's own renderer); a cursor is always the last record
written in full, so lag and `max_lag` evictions count as before; and a client that stops
reading costs the others one non-blocking write that takes less than asked, once: from then
on it is on the normal path, where it lags and is dropped as `lagging`. A burst of more than
`BATCH` records, or records no longer in the log's memory, goes the normal way, in batches,
as it always did. The bytes written directly are counted (`papaya_sent_bytes_total`) once per
publish and port (`DirectWriter.count`), not once per write.

Only streams that can take bytes without waiting get a lease (`direct_writer`): plain TCP
sockets (and the simulation's links). TLS streams stay on the normal path (the record layer
belongs to the SSL object, written through trio), and so does WebSocket (trio-websocket's
reader task writes pongs to the same stream on its own).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

import trio

from papaya_trio.protocol.events import ServerEvent

BATCH: Final = 64  # records in one write, on either path

#: A non-blocking write: returns how many bytes the stream took now (0 when its buffer is
#: full); raises one of WRITE_ERRORS when the connection is broken or closed.
DirectWrite = Callable[[bytes | memoryview], int]

WRITE_ERRORS: Final = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


def uncounted(sent: int) -> None:
    """Nobody counts this stream's bytes."""


@dataclass(frozen=True, slots=True)
class DirectWriter:
    """A stream's non-blocking write, and who counts the bytes written that way: the
    broadcaster sums them over a publish and tells `count` once (a metrics counter's
    increment costs as much as a write's bookkeeping)."""

    write: DirectWrite
    count: Callable[[int], None] = uncounted


@runtime_checkable
class DirectlyWritable(Protocol):
    """A stream (a wrapper, or the simulation's link) that can offer a non-blocking write."""

    def direct_writer(self) -> DirectWriter | None:
        """The stream's non-blocking write, or None if it has none."""
        ...


def direct_writer(stream: trio.abc.Stream) -> DirectWriter | None:
    """A non-blocking write to `stream`, or None if it cannot take bytes without waiting."""
    if isinstance(stream, trio.SocketStream):
        return DirectWriter(_socket_writer(stream.socket))
    if isinstance(stream, DirectlyWritable):
        return stream.direct_writer()
    return None


def _socket_writer(sock: trio.socket.SocketType) -> DirectWrite:
    def write(data: bytes | memoryview) -> int:
        fd = sock.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("socket was already closed")
        try:
            return os.write(fd, data)  # trio keeps its sockets non-blocking
        except BlockingIOError:
            return 0

    return write


@dataclass(frozen=True, slots=True)
class Lease:
    """What an idle send task lends the broadcaster: its stream, as a non-blocking write.

    `kind` names the dialect and framing: every lease of one kind renders the same records to
    the same bytes, so the broadcaster renders once per kind. `render` turns events (live
    messages, or a presence or typing notice) into the bytes of one write, exactly as the
    peer's `send` would write them; `writer` writes without waiting; `finish` writes a
    partial write's rest the normal (blocking) way.
    """

    kind: str
    render: Callable[[Sequence[ServerEvent]], bytes]
    writer: DirectWriter
    finish: Callable[[memoryview], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Handover:
    """The rest of a partial direct write, handed to the send task with its stream: write
    `rest` with `lease.finish`, then the client has every record up to `cursor`."""

    lease: Lease
    rest: memoryview
    cursor: int
