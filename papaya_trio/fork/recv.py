"""The RECV process: reads the client, stores its messages, queues replies for SEND.

RECV decodes the client's bytes with the same sans-I/O decoder as trio mode, appends each
message with `LogWriter` (LOCK_EX, dedupe, fsync policy), pokes the parent's notify pipe so
every SEND wakes, and queues the native dialect's replies (acks, pongs, errors) as complete
lines in its SEND's reply pipe: SEND is the only writer to the socket, so replies and messages
never interleave. The reply pipe is bounded by the kernel (64 KiB): if the client stops reading,
SEND stops taking replies and RECV blocks on the pipe, so the client is slowed down, never
buffered without bound (trio mode's bounded outbox does the same).

RECV ends when the client closes, on a fatal protocol error, on a stop signal, or when its
SEND has ended (the partner pipe, whose only write end SEND holds, reports end of file).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from papaya_trio.chatlog import StorageFailed
from papaya_trio.droplog import DroppedLines
from papaya_trio.fork import wakeup
from papaya_trio.fork.connection import Connection, Stopped, read_event
from papaya_trio.fork.logfile import LogWriter
from papaya_trio.peer import PeerGone
from papaya_trio.protocol.decoding import LineDecoder
from papaya_trio.protocol.events import (
    Ack,
    EndOfStream,
    Error,
    FetchHistory,
    Hello,
    HistoryPage,
    KeyPresented,
    Ping,
    Pong,
    SendText,
    ServerEvent,
    Typing,
    Violation,
)
from papaya_trio.protocol.native import encode_line
from papaya_trio.records import Record
from papaya_trio.session import Identity

#: Reads a history page: (before, limit) -> (records, oldest sequence number).
HistoryReader = Callable[[int, int], tuple[list[Record], int]]

logger = logging.getLogger(__name__)


class Receiver:
    """One client's RECV loop. Run it with `run()`, which returns why it ended."""

    def __init__(
        self,
        conn: Connection,
        decoder: LineDecoder,
        writer: LogWriter,
        *,
        identity: Identity,
        history: HistoryReader,
        native: bool,
        notify_fd: int,
        reply_fd: int,
        partner_fd: int,
    ) -> None:
        self._conn = conn
        self._decoder = decoder
        self._writer = writer
        self._identity = identity
        self._user = identity.user
        self._history = history
        self._native = native
        self._dropped = DroppedLines(conn.label)
        self._notify_fd = notify_fd
        self._reply_fd = reply_fd
        self._partner_fd = partner_fd

    def __repr__(self) -> str:
        return f"<Receiver {self._user or 'papaya'} {self._conn.label}>"

    def run(self) -> str:
        """Serve the client's input until one of the ends above."""
        try:
            return self._serve()
        except Stopped:
            return "shutdown"
        except PeerGone as exc:
            return f"connection lost: {exc}"
        finally:
            self._dropped.summarise()

    def _serve(self) -> str:
        while True:
            event = read_event(self._conn, self._decoder, None, also=[self._partner_fd])
            match event:
                case set():
                    self._conn.raise_if_stopped()  # SEND may have ended for the same shutdown
                    return "send process ended"
                case SendText():
                    self._store(event)
                case Typing():
                    pass  # fork mode relays no typing hints (docs/protocol.md)
                case FetchHistory(before=before, limit=limit, request_id=request_id):
                    records, first = self._history(before, limit)
                    self._reply(HistoryPage(request_id, before, tuple(records), first))
                case Ping(ping_id=ping_id):
                    self._reply(Pong(ping_id))
                case Violation(code=code, message=message, fatal=fatal, client_id=client_id):
                    if not self._native:
                        self._dropped.note(message)
                    self._reply(Error(code, message, fatal, client_id))
                    if fatal:
                        return code
                case Hello() | KeyPresented():
                    self._reply(
                        Error("already_authenticated", "the session is already authenticated")
                    )
                case EndOfStream():
                    self._conn.raise_if_stopped()  # SEND shuts the socket down as it stops
                    return "client closed"

    def _store(self, event: SendText) -> None:
        user = self._user or event.user
        assert user is not None, "the papayaChat decoder always names the user"
        try:
            result = self._writer.append(
                user,
                event.text,
                event.client_id,
                action=event.action,
                dialect=None if self._native else "papaya",
                verified=self._identity.verified,
            )
        except StorageFailed as exc:
            self._reply(Error("storage_failed", str(exc), False, event.client_id))
            return
        # Even after a resend: the fsync this writer waited for may have made a record visible
        # whose own writer died before it could poke.
        wakeup.poke(self._notify_fd)
        self._reply(Ack(event.client_id, result.seq))

    def _reply(self, event: ServerEvent) -> None:
        """Queue a reply line for SEND (the papayaChat dialect has no replies)."""
        if not self._native:
            return
        view = memoryview(encode_line(event))
        try:
            while view:
                view = view[os.write(self._reply_fd, view) :]
        except BrokenPipeError:
            raise PeerGone("send process ended") from None
