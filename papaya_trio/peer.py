"""What a session talks to: a peer that yields client events and takes server events.

Transports (TCP in either dialect, WebSocket) implement `Peer`; the session code sees only
events, never bytes, frames or sockets. Each transport translates its own I/O exceptions into
PeerGone in exactly one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from papaya_trio.protocol.events import ClientEvent, ServerEvent


class PeerGone(Exception):
    """The connection broke (reset, closed under us, or a write that cannot complete)."""


class Peer(Protocol):
    """One connected client, seen as events."""

    @property
    def label(self) -> str:
        """Transport and address, for logs: `tcp 127.0.0.1:50312`."""
        ...

    async def receive(self) -> ClientEvent:
        """The next event from the client; raises PeerGone if the connection broke."""
        ...

    async def send(self, events: Sequence[ServerEvent]) -> None:
        """Write events to the client, in order; raises PeerGone if the connection broke."""
        ...
