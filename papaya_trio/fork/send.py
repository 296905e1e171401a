"""The SEND process: the only writer to its client.

Theory of operation
-------------------
SEND loops: wait in ``poll()`` for its wake pipe, its RECV's reply pipe or a signal; then, for
a wake-up, empty the wake pipe (see `wakeup` for why that comes first), for a reply take the
complete reply lines its RECV has queued; then read every log record after its cursor (up to
the durable end with ``fsync = "always"``, see `logfile`) and write those messages and then the
replies to the client in one write. Replies are taken before the log is read, so a message is
written before the ack for it (as in trio mode).

Each wake-up costs what one delivery must: ``poll``, one read of the wake pipe, one read of
the log under ``LOCK_SH`` (a read that stops short of a full chunk reached the end: whatever
is appended later pokes the wake pipe again, so nothing is read twice to find the end), and
one ``send``; the poll set is registered once, and the send is tried before any ``poll()`` for
room, which a client that keeps up has. Each record is decoded once (`LogReader`) and rendered
by the dialects' own code (`protocol.native.encode_line`, `protocol.papaya.encode_writes`), as
in trio mode; for the papayaChat dialect a batch is what the original daemon sent at a wake-up:
the live lines joined, one final NUL. A batch ends with the chunk that brings it to
BATCH_BYTES of log: a client far behind (a long history) gets one write per batch, and its lag
is checked between them.

The log is read in bounded chunks, each under ``LOCK_SH``, and the lock is never held while
writing to the client, so a client that stops reading blocks nobody but its own SEND.

SEND ends when:

- the reply pipe reaches end of file: its RECV is done (the client closed, a fatal error was
  queued, or RECV died). What is left is written first.
- a stop signal arrives: it finishes the write in progress (at most REFUSAL_WRITE_TIMEOUT
  more), says ``shutdown`` and ends; likewise if the parent vanishes (its wake pipe closes).
  Writes the socket takes at once never wait in ``poll()``, so between the batches of a
  backlog SEND looks at its signal pipe itself.
- its lag passes ``max_lag``: every LAG_CHECK_INTERVAL while a write waits for the client, or
  while it is still reading a backlog, it counts the log's lines beyond what it has read
  (`logfile.count_lines`, nothing decoded). A write the socket took at once after a read that
  reached the end of the log leaves the client caught up, with nothing to check. Between
  messages it says ``lagging``; stuck in the middle of a write to a client that stopped
  reading, it just drops the connection.

Closing: SEND shuts the socket down as it ends, so its RECV's next read sees the end too.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from collections.abc import Sequence
from contextlib import suppress

from papaya_trio import SERVER_NAME
from papaya_trio.fork import wakeup
from papaya_trio.fork.connection import Connection, Expired, Stopped
from papaya_trio.fork.logfile import DurableEnd, LogFile, LogReader, count_lines
from papaya_trio.handshake import REFUSAL_WRITE_TIMEOUT, SHUTDOWN
from papaya_trio.peer import PeerGone
from papaya_trio.protocol.events import Error, Message, ServerEvent, Welcome
from papaya_trio.protocol.native import encode_line
from papaya_trio.protocol.papaya import encode_writes
from papaya_trio.records import Record

logger = logging.getLogger(__name__)

LAG_CHECK_INTERVAL = 0.25
REPLY_READ_BYTES = 64 * 1024
BATCH_BYTES = 256 * 1024  # a batch ends with the chunk of log that reaches this
PEEK_CHUNKS = 16  # at most this many chunks read per lag check (the lag is then a lower bound)


class Lagging(Exception):
    """The client fell more than max_lag messages behind; `clean` if between messages."""

    def __init__(self, clean: bool) -> None:
        super().__init__("lagging")
        self.clean = clean


class Sender:
    """One client's SEND loop. Run it with `run()`, which returns why it ended."""

    def __init__(
        self,
        conn: Connection,
        log: LogFile,
        reader: LogReader,
        durable: DurableEnd,
        *,
        user: str | None,
        verified: bool = False,
        cursor: int,
        head: int,
        native: bool,
        wake_fd: int,
        reply_fd: int,
        max_lag: int,
    ) -> None:
        self._conn = conn
        self._log = log
        self._reader = reader
        self._durable = durable
        self._peek_offset = 0  # how far the lag count has read (see `_lag`)
        self._peek_seq = 0  # the sequence number of the record that ends there
        self._user = user
        self._verified = verified
        self.cursor = cursor
        self._welcome_head = head  # also where the live stream starts, for the lag
        self._native = native
        self._wake_fd = wake_fd
        self._reply_fd = reply_fd
        self._max_lag = max_lag
        self._replies = b""
        self._replies_ended = False
        self._backlog = False  # the last read stopped at BATCH_BYTES, short of the log's end
        self._next_lag_check = 0.0

    def __repr__(self) -> str:
        return f"<Sender {self._user or 'papaya'} {self._conn.label} cursor={self.cursor}>"

    def run(self) -> str:
        """Serve the client until one of the ends above; never raises for client behaviour."""
        try:
            return self._serve()
        except Stopped:
            self._goodbye(SHUTDOWN, REFUSAL_WRITE_TIMEOUT)
            return "shutdown"
        except Lagging as lagging:
            logger.warning("%s: fell more than %d messages behind", self._conn.label, self._max_lag)
            if lagging.clean:
                message = f"you fell more than {self._max_lag} messages behind"
                # A client this far behind has likely stopped reading: do not wait long.
                self._goodbye(Error("lagging", message, fatal=True), LAG_CHECK_INTERVAL)
            return "lagging"
        except PeerGone as exc:
            return f"connection lost: {exc}"
        finally:
            with suppress(OSError):
                self._conn.sock.shutdown(socket.SHUT_RDWR)

    def _serve(self) -> str:
        head = self._welcome_head
        # No `online`: fork mode's processes share no member list (docs/protocol.md).
        welcome = Welcome(
            SERVER_NAME, self._user or "", head, first=min(head, 1), verified=self._verified
        )
        if greeting := self._render([welcome]):  # the papayaChat dialect has no welcome
            self._write(greeting)
        watch = self._conn.watch([self._wake_fd, self._reply_fd])
        ready = {self._wake_fd, self._reply_fd}  # look at both before the first wait
        while True:
            self.wake_up(ready)
            if self._replies_ended:
                # RECV also ends on a shutdown: ours may have arrived during the last poll.
                self._conn.raise_if_stopped()
                return "client closed"
            ready = watch.wait()

    def wake_up(self, ready: set[int]) -> None:
        """Take the news the `ready` descriptors bring, then write everything new (one write
        per batch, the replies at the end of the last)."""
        if self._wake_fd in ready and not wakeup.drain(self._wake_fd):
            raise Stopped  # the parent is gone: nobody would wake us again
        replies = self._take_replies() if self._reply_fd in ready else b""
        while True:
            records = self._read_batch()
            data = self._render([self._message(record) for record in records])
            if not self._backlog:
                data += replies
            if data:
                self._write(data)
            if records:
                self.cursor = records[-1].seq
            if not self._backlog:
                return
            # Writes the socket takes at once never poll: look for a stop between batches.
            self._conn.raise_if_stopped()

    def _take_replies(self) -> bytes:
        """Complete reply lines queued by RECV (one bounded read); notes the pipe's end."""
        try:
            data = os.read(self._reply_fd, REPLY_READ_BYTES)
        except BlockingIOError:
            data = None
        if data == b"":
            self._replies_ended = True
        self._replies += data or b""
        end = self._replies.rfind(b"\n") + 1
        complete, self._replies = self._replies[:end], self._replies[end:]
        return complete

    def _read_batch(self) -> list[Record]:
        """The records after the cursor in the next BATCH_BYTES of log, chunk by chunk, up to
        the end of the log (or the durable end); `_backlog` says whether it stopped short."""
        reader = self._reader
        start = reader.offset
        limit = self._durable.limit()
        records: list[Record] = []
        while True:
            with self._log.locked(fcntl.LOCK_SH):
                scanned = reader.read_chunk(limit)
            records += [item.record for item in scanned if item.record.seq > self.cursor]
            self._backlog = not reader.at_end
            if reader.at_end or reader.offset - start >= BATCH_BYTES:
                return records

    def _message(self, record: Record) -> Message:
        return Message(record, replay=record.seq <= self._welcome_head)

    def _render(self, events: Sequence[ServerEvent]) -> bytes:
        """The bytes that carry `events`, with the dialect's own encoders (as trio mode's)."""
        if self._native:
            return b"".join([encode_line(event) for event in events])
        return b"".join(encode_writes(events))

    def _write(self, data: bytes) -> None:
        """Write all of `data`, checking the lag as it goes; finish it after a stop signal."""
        view = memoryview(data)
        sent = self._conn.send_now(view)
        give_up_at: float | None = None
        while True:
            view = view[sent:]
            if not view and not self._backlog:
                break  # all taken at once, and nothing left to read: the client is caught up
            now = time.monotonic()
            if view and give_up_at is not None and now > give_up_at:
                raise PeerGone("write abandoned at shutdown: the client stopped reading")
            if now >= self._next_lag_check:
                self._next_lag_check = now + LAG_CHECK_INTERVAL
                if self._lag() > self._max_lag:
                    raise Lagging(clean=len(view) in (0, len(data)))  # between messages
            if not view:
                break
            try:
                sent = self._conn.send_some(view, LAG_CHECK_INTERVAL, stoppable=give_up_at is None)
            except Stopped:
                give_up_at = time.monotonic() + REFUSAL_WRITE_TIMEOUT
                sent = 0
        if give_up_at is not None:
            raise Stopped

    def _lag(self) -> int:
        """Live messages in the log that this client has not been sent."""
        if self._peek_offset < self._reader.offset:
            self._peek_offset, self._peek_seq = self._reader.offset, self._reader.last_seq
        lines, self._peek_offset = count_lines(
            self._log, self._peek_offset, self._durable.limit(), PEEK_CHUNKS
        )
        self._peek_seq += lines
        return self._peek_seq - max(self.cursor, self._welcome_head)

    def _goodbye(self, error: Error, timeout: float) -> None:
        """Tell a native client why it is being closed (papayaChat clients cannot be told)."""
        if not self._native:
            return
        with suppress(Expired, PeerGone):
            self._conn.send_all(encode_line(error), time.monotonic() + timeout)
