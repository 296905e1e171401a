"""What the two sink servers share: options, the port announcement, and the output path.

A sink reads every byte a client sends and writes it to its stdout, which the bench
redirects to /dev/null (as the paper's servers did). Both sinks write each received chunk
with `os.write` on fd 1 straight away, so they do the same work per byte and differ only
in how they wait for data: a trio task per connection, or a process per connection.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

#: Sinks listen on loopback only.
HOST = "127.0.0.1"
#: The first line a sink writes on stderr, once it is listening.
ANNOUNCEMENT_PREFIX = "listening on 127.0.0.1:"
#: The paper's C server read 4096 bytes at a time.
DEFAULT_RECV_SIZE = 4096
DEFAULT_MAX_CONNECTIONS = 1024
#: A sink left behind by a crashed bench still exits by itself after this many seconds.
DEFAULT_LIFETIME = 3600.0
STDOUT_FD = 1


@dataclass(frozen=True)
class SinkOptions:
    """Command-line options common to both sinks."""

    port: int
    max_connections: int
    lifetime: float
    recv_size: int


def parse_options(description: str, argv: Sequence[str] | None = None) -> SinkOptions:
    """Parse a sink's command line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    parser.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="stop accepting after this many connections",
    )
    parser.add_argument(
        "--lifetime",
        type=float,
        default=DEFAULT_LIFETIME,
        help="exit after this many seconds whatever happens",
    )
    parser.add_argument(
        "--recv-size", type=int, default=DEFAULT_RECV_SIZE, help="bytes asked for per read"
    )
    ns = parser.parse_args(argv)
    if ns.max_connections < 1 or ns.lifetime <= 0 or ns.recv_size < 1:
        parser.error("--max-connections, --lifetime and --recv-size must be positive")
    return SinkOptions(
        port=ns.port,
        max_connections=ns.max_connections,
        lifetime=ns.lifetime,
        recv_size=ns.recv_size,
    )


def announce(port: int) -> None:
    """Tell the bench which port we listen on: the first line on stderr."""
    sys.stderr.write(f"{ANNOUNCEMENT_PREFIX}{port}\n")
    sys.stderr.flush()


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of `data` to `fd` (a pipe may take less than asked per call)."""
    view = memoryview(data)
    # Each round writes at least one byte or raises, so this ends within len(data) rounds.
    while view:
        written = os.write(fd, view)
        view = view[written:]
