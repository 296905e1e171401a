"""TCP keepalive on an accepted socket, so that a peer that vanished is noticed.

A peer that disappears without closing (a laptop lid shut, a NAT entry dropped, a host
powered off) leaves a connection that looks open for ever when the room is quiet: nothing is
sent, so nothing fails. With keepalive the kernel probes a connection after `idle` seconds
without traffic, every `interval` seconds, and resets it after `count` unanswered probes, so
a dead peer is gone within ``idle + interval * count`` seconds. `TCP_USER_TIMEOUT` is set to
that same bound: in a busy room the data we send is what goes unanswered, and without it the
kernel would retransmit for about 15 minutes before giving up.

The function takes any object with `setsockopt` (a stdlib socket or a trio socket), so fork
mode can call it on the sockets it accepts.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Protocol


class SupportsSetsockopt(Protocol):
    """What `set_tcp_keepalive` needs of a socket."""

    def setsockopt(self, level: int, optname: int, value: int, /) -> None: ...


@dataclass(frozen=True, slots=True)
class TcpKeepalive:
    """When the kernel probes an idle connection and when it gives up (seconds, probes)."""

    idle: int = 60
    interval: int = 10
    count: int = 5

    @property
    def bound(self) -> int:
        """Seconds after which a peer that stopped answering is reset."""
        return self.idle + self.interval * self.count


def set_tcp_keepalive(sock: SupportsSetsockopt, keepalive: TcpKeepalive) -> None:
    """Turn keepalive on for `sock` with these timings (the Linux options where they exist).

    Raises OSError if the socket refuses (e.g. it is already closed).
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", keepalive.idle),
        ("TCP_KEEPINTVL", keepalive.interval),
        ("TCP_KEEPCNT", keepalive.count),
        ("TCP_USER_TIMEOUT", keepalive.bound * 1000),  # milliseconds
    ):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
