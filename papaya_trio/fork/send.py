"""The SEND process: the only writer to its client.

Theory of operation
-------------------
SEND loops: empty its wake pipe (see `wakeup` for why that comes first), take the complete
reply lines its RECV has queued in the reply pipe, write every log record after its cursor
(up to the durable end with ``fsync = "always"``, see `logfile`),
then those replies, then wait in ``poll()`` for the wake pipe, the reply pipe or a signal. The
log is read in bounded chunks, each under ``LOCK_SH``, and the lock is never held while writing
to the client, so a client that stops reading blocks nobody but its own SEND. Replies are
taken before the log is read, so a message is written before the ack for it (as in trio mode).

SEND ends when:

- the reply pipe reaches end of file: its RECV is done (the client closed, a fatal error was
  queued, or RECV died). What is left is written first.
- a stop signal arrives: it finishes the write in progress (at most REFUSAL_WRITE_TIMEOUT
  more), says ``shutdown`` and ends; likewise if the parent vanishes (its wake pipe closes).
- its lag passes ``max_lag``: every LAG_CHECK_INTERVAL while writing it measures how far the log
  has run ahead of what it has written. Between messages it says ``lagging``; stuck in the
  middle of a write to a client that stopped reading, it just drops the connection.

Closing: SEND shuts the socket down as it ends, so its RECV's next read sees the end too.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from contextlib import suppress

from papaya_trio import SERVER_NAME
from papaya_trio.fork import wakeup
from papaya_trio.fork.connection import Connection, Expired, Stopped
from papaya_trio.fork.logfile import DurableEnd, LogFile, LogReader
from papaya_trio.handshake import REFUSAL_WRITE_TIMEOUT, SHUTDOWN
from papaya_trio.peer import PeerGone
from papaya_trio.protocol.events import Error, Message, ServerEvent, Welcome
from papaya_trio.protocol.native import encode_line
from papaya_trio.protocol.papaya import encode_writes
from papaya_trio.records import Record

logger = logging.getLogger(__name__)

LAG_CHECK_INTERVAL = 0.25
REPLY_READ_BYTES = 64 * 1024
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
        self._peek: LogReader | None = None  # reads ahead of `reader` to measure the lag
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
        self._send_events([welcome])
        while True:
            if not wakeup.drain(self._wake_fd):
                raise Stopped  # the parent is gone: nobody would wake us again
            replies = self._take_replies()
            self._deliver_log()
            if replies:
                self._write(replies)
            if self._replies_ended:
                # RECV also ends on a shutdown: ours may have arrived during the last poll.
                self._conn.raise_if_stopped()
                return "client closed"
            self._conn.wait([self._wake_fd, self._reply_fd])

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

    def _deliver_log(self) -> None:
        """Write every record after the cursor, reading chunk by chunk to the end of the log."""
        while True:
            with self._log.locked(fcntl.LOCK_SH):
                scanned = self._reader.read_chunk(self._durable.limit())
            if not scanned:
                return
            fresh = [item.record for item in scanned if item.record.seq > self.cursor]
            if fresh:
                self._send_events([self._message(record) for record in fresh])
                self.cursor = fresh[-1].seq

    def _message(self, record: Record) -> Message:
        return Message(record, replay=record.seq <= self._welcome_head)

    def _send_events(self, events: list[ServerEvent]) -> None:
        if self._native:
            self._write(b"".join(encode_line(event) for event in events))
        else:
            for chunk in encode_writes(events):
                self._write(chunk)

    def _write(self, data: bytes) -> None:
        """Write all of `data`, checking the lag as it goes; finish it after a stop signal."""
        view = memoryview(data)
        give_up_at: float | None = None
        while view:
            try:
                sent = self._conn.send_some(view, LAG_CHECK_INTERVAL, stoppable=give_up_at is None)
            except Stopped:
                give_up_at = time.monotonic() + REFUSAL_WRITE_TIMEOUT
                continue
            view = view[sent:]
            now = time.monotonic()
            if view and give_up_at is not None and now > give_up_at:
                raise PeerGone("write abandoned at shutdown: the client stopped reading")
            if now >= self._next_lag_check:
                self._next_lag_check = now + LAG_CHECK_INTERVAL
                if self._lag() > self._max_lag:
                    raise Lagging(clean=len(view) == len(data))
        if give_up_at is not None:
            raise Stopped

    def _lag(self) -> int:
        """Live messages in the log that this client has not been sent."""
        peek = self._peek
        if peek is None or peek.offset < self._reader.offset:
            peek = self._peek = LogReader(self._log, self._reader.offset, self._reader.last_seq)
        for _ in range(PEEK_CHUNKS):
            with self._log.locked(fcntl.LOCK_SH):
                if not peek.read_chunk(self._durable.limit()):
                    break
        return peek.last_seq - max(self.cursor, self._welcome_head)

    def _goodbye(self, error: Error, timeout: float) -> None:
        """Tell a native client why it is being closed (papayaChat clients cannot be told)."""
        if not self._native:
            return
        with suppress(Expired, PeerGone):
            self._conn.send_all(encode_line(error), time.monotonic() + timeout)
