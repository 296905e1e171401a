"""One connection's process: authenticate, then become RECV and fork SEND (the pair).

The parent forks this process for every accepted connection. It sniffs the dialect and
authenticates (`auth`); then, like the original, it becomes the client's RECV and forks the
client's SEND. Before forking it fixes where the client's stream starts: under LOCK_SH it reads
the log up to its end (its head), and picks the cursor the history request asks for. The wake
pipe existed before the head was read, so every record appended later is both after the head
and announced to SEND: no gap, no duplicate between history and live messages.

Descriptors: each process keeps only its own. SEND opens the log itself (its own open file
description, so its LOCK_SH and RECV's LOCK_EX exclude each other), keeps the wake pipe's read
end, the reply pipe's read end and the partner pipe's write end; RECV keeps the other ends.
When RECV ends it closes the reply pipe (SEND writes what is left and ends), then reaps SEND.

SEND asks to die with its RECV (`signals.die_with_parent`), as RECV does with the parent, so
killing the parent ends the whole tree. If SEND cannot be started for lack of descriptors,
memory or processes, the client is refused (native: ``server_full``) and the process ends.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NoReturn

from papaya_trio.accounts import Accounts
from papaya_trio.chatlog import FsyncPolicy
from papaya_trio.fork.auth import Admitted, admit, refuse
from papaya_trio.fork.connection import Connection
from papaya_trio.fork.logfile import (
    DurableEnd,
    LogFile,
    LogIndex,
    LogWriter,
    read_history,
    read_records,
)
from papaya_trio.fork.overload import EXHAUSTION_ERRORS
from papaya_trio.fork.recv import Receiver
from papaya_trio.fork.send import Sender
from papaya_trio.fork.signals import (
    SignalWatch,
    become_child,
    close_quietly,
    forking_safely,
)
from papaya_trio.protocol.events import Error
from papaya_trio.protocol.papaya import HISTORY_LINES, history_tail
from papaya_trio.room import RoomSettings
from papaya_trio.service import wall_clock_ms
from papaya_trio.session import HistoryRequest, LastN, PapayaTail, Since

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ForkContext:
    """What every connection process inherits from the parent."""

    settings: RoomSettings
    key: bytes
    log_path: Path
    fsync: FsyncPolicy
    durable: DurableEnd
    index: LogIndex  # the parent's, as of the fork; each process then keeps its copy current
    notify_fd: int
    accounts: Accounts | None = None  # None with auth = "key"


def run_child(main: Callable[[], object]) -> NoReturn:
    """Run a forked process's body and end the process; never returns into the parent's code."""
    status = 0
    try:
        main()
    except BaseException:
        logger.exception("fork-mode process failed")
        status = 1
    finally:
        sys.stderr.flush()
        os._exit(status)


def serve_connection(
    sock: socket.socket,
    ctx: ForkContext,
    signals: SignalWatch,
    *,
    label: str,
    wake_fd: int,
    connected_at: float,
) -> None:
    """The whole life of one connection's process (it ends with its return)."""
    conn = Connection(sock, signals, label)
    try:
        admitted = admit(conn, ctx.settings, ctx.key, ctx.accounts, connected_at=connected_at)
        if admitted is not None:
            _serve_pair(conn, ctx, admitted, wake_fd)
    finally:
        sock.close()


def _serve_pair(conn: Connection, ctx: ForkContext, admitted: Admitted, wake_fd: int) -> None:
    log = LogFile(ctx.log_path)
    index = ctx.index
    with log.locked(fcntl.LOCK_SH):
        index.catch_up(log, ctx.durable.limit())
    head = index.head
    cursor = _start_cursor(admitted.identity.history, head, log, index)
    recv_pid = os.getpid()
    try:  # on failure the pipes close as this process ends, right after the refusal
        reply_read, reply_write = os.pipe2(os.O_CLOEXEC)
        partner_read, partner_write = os.pipe2(os.O_CLOEXEC)
        with forking_safely():
            pid = os.fork()
            if pid == 0:
                inherited = [log.fd, reply_write, partner_read, ctx.notify_fd]
                start = _SendStart(recv_pid, inherited, wake_fd, reply_read)
                run_child(lambda: _run_send(conn, ctx, admitted, index, cursor, head, start))
    except OSError as exc:
        if exc.errno not in EXHAUSTION_ERRORS:
            raise
        logger.error("%s: refused: cannot start its send process: %s", conn.label, exc.strerror)
        if admitted.native:
            refuse(conn, Error("server_full", "the server is full", fatal=True))
        log.close()
        return
    close_quietly([wake_fd, reply_read, partner_write])
    who = admitted.identity.user or "papayaChat client"
    logger.info("%s: %s joined", conn.label, who)
    writer = LogWriter(log, index, ctx.durable, wall_clock_ms)
    receiver = Receiver(
        conn,
        admitted.decoder,
        writer,
        identity=admitted.identity,
        history=partial(read_history, log, index, ctx.durable),
        native=admitted.native,
        notify_fd=ctx.notify_fd,
        reply_fd=reply_write,
        partner_fd=partner_read,
    )
    try:
        reason = receiver.run()
    finally:
        os.close(reply_write)  # SEND writes what is queued, then ends
        os.waitpid(pid, 0)
        writer.close()
        log.close()
    logger.info("%s: %s left: %s", conn.label, who, reason)


@dataclass(frozen=True, slots=True)
class _SendStart:
    """What a freshly forked SEND needs from its RECV's side of the fork."""

    recv_pid: int
    inherited: list[int]  # RECV's descriptors, to close
    wake_fd: int
    reply_fd: int


def _run_send(
    conn: Connection,
    ctx: ForkContext,
    admitted: Admitted,
    index: LogIndex,
    cursor: int,
    head: int,
    start: _SendStart,
) -> None:
    conn.signals = become_child(conn.signals, start.recv_pid, start.inherited)
    os.set_blocking(start.reply_fd, False)
    log = LogFile(ctx.log_path)  # SEND's own open file description
    sender = Sender(
        conn,
        log,
        index.reader_for(log, cursor + 1),
        ctx.durable,
        user=admitted.identity.user,
        verified=admitted.identity.verified,
        cursor=cursor,
        head=head,
        native=admitted.native,
        wake_fd=start.wake_fd,
        reply_fd=start.reply_fd,
        max_lag=ctx.settings.max_lag,
    )
    reason = sender.run()
    logger.debug("%s: send process ended: %s", conn.label, reason)


def _start_cursor(history: HistoryRequest, head: int, log: LogFile, index: LogIndex) -> int:
    """The last sequence number the client counts as seen (as trio mode's session decides)."""
    match history:
        case Since(seq=seq):
            return min(seq, head)
        case LastN(count=count):
            return max(0, head - count)
        case PapayaTail():
            recent = read_records(log, index, max(1, head - HISTORY_LINES + 1), head)
            tail = history_tail(recent)
            return tail[0].seq - 1 if tail else head
