"""The fork sink: one process per connection, like the paper's C server.

A blocking accept loop forks a child per connection. The child reads into one reusable
buffer and writes each chunk to stdout until EOF, then exits. The parent reaps children on
SIGCHLD so none is left a zombie. Bounds: at most `--max-connections` accepts, and every
process (parent and each child) gets an alarm after `--lifetime` seconds, whose default
action ends it.

Run: ``python -m papaya_trio.bench.sink_fork --port 0 > /dev/null``; the first stderr line
gives the port.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Sequence
from types import FrameType

from papaya_trio.bench.sink_common import (
    HOST,
    STDOUT_FD,
    SinkOptions,
    announce,
    parse_options,
    write_all,
)


def _reap_children(_signum: int, _frame: FrameType | None) -> None:
    # One SIGCHLD may stand for several exited children; collect all that are ready.
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _serve_connection(conn: socket.socket, recv_size: int) -> None:
    buffer = bytearray(recv_size)
    view = memoryview(buffer)
    while received := conn.recv_into(buffer):
        write_all(STDOUT_FD, view[:received])


def _child(conn: socket.socket, options: SinkOptions) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # Alarms are not inherited across fork; each child arms its own.
    signal.alarm(max(1, round(options.lifetime)))
    try:
        _serve_connection(conn, options.recv_size)
    finally:
        conn.close()


def serve(options: SinkOptions) -> None:
    """Accept up to `options.max_connections` connections, forking a child for each."""
    signal.alarm(max(1, round(options.lifetime)))
    signal.signal(signal.SIGCHLD, _reap_children)
    with socket.create_server((HOST, options.port), backlog=options.max_connections) as lsock:
        announce(lsock.getsockname()[1])
        for _ in range(options.max_connections):
            conn, _address = lsock.accept()
            pid = os.fork()
            if pid == 0:
                lsock.close()
                try:
                    _child(conn, options)
                finally:
                    # Never fall back into the parent's loop or run its cleanup.
                    os._exit(0)
            conn.close()
    # Every connection was accepted: wait for the children, then exit.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _reap_all()


def _reap_all() -> None:
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse options and serve until the connection budget or lifetime ends."""
    serve(parse_options("fork sink: one process per connection", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
