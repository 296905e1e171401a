"""What a session talks to: a peer that yields client events and takes server events.

Transports (TCP in either dialect, WebSocket) implement `Peer`; the session code sees only
events, never bytes, frames or sockets. Each transport translates its own I/O exceptions into
PeerGone in exactly one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from typing import Protocol

import trio

from papaya_trio.fanout import Lease
from papaya_trio.protocol.events import ClientEvent, Error, ServerEvent

REFUSAL_WRITE_TIMEOUT = 2.0


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

    def lease(self) -> Lease | None:
        """What the send task lends the broadcaster while idle (the fan-out fast path, see
        `fanout`), or None if this peer's stream cannot be written without waiting."""
        ...


async def refuse(peer: Peer, error: Error) -> None:
    """Best-effort write of a fatal error to a client about to be dropped: a client that does
    not read gets REFUSAL_WRITE_TIMEOUT seconds, then is dropped all the same."""
    with trio.move_on_after(REFUSAL_WRITE_TIMEOUT):
        with suppress(PeerGone):
            await peer.send([error])
