"""Authentication: the native hello (TCP and WebSocket alike) and the papayaChat key.

Both run before the session's nursery exists, so they may write to the peer directly. Replies
to a client that fails to authenticate are written under a short timeout: a client that does
not read cannot hold the server.
"""

from __future__ import annotations

import logging
from contextlib import suppress

import trio

from papaya_trio.peer import Peer, PeerGone
from papaya_trio.protocol.events import Error, Hello, KeyPresented, Violation
from papaya_trio.room import Room
from papaya_trio.session import Identity, LastN, PapayaTail, Since

logger = logging.getLogger(__name__)

REFUSAL_WRITE_TIMEOUT = 2.0


SHUTDOWN = Error("shutdown", "the server is shutting down", fatal=True)


async def native_handshake(peer: Peer, room: Room, deadline: float) -> Identity | None:
    """Wait for a good hello until `deadline` (trio time). None if the client was refused."""
    with room.handshaking() as closing, trio.move_on_at(deadline):
        event = await peer.receive()
        match event:
            case Hello(key=key, user=user, since=since):
                if not room.key_matches(key):
                    logger.warning("%s: auth failed: wrong key (user %r)", peer.label, user)
                    await refuse(peer, Error("bad_key", "the key is wrong", fatal=True))
                    return None
                history = LastN(room.settings.history) if since is None else Since(since)
                return Identity(user, history)
            case Violation(code=code, message=message):
                logger.warning("%s: auth failed: %s", peer.label, message)
                await refuse(peer, Error(code, message, fatal=True))
            case _:
                logger.warning("%s: auth failed: no hello", peer.label)
                error = Error("not_authenticated", "the first message must be a hello", True)
                await refuse(peer, error)
        return None
    if closing.cancelled_caught:
        await refuse(peer, SHUTDOWN)
        return None
    logger.warning("%s: auth failed: timeout", peer.label)
    await refuse(peer, Error("auth_timeout", "no hello arrived in time", fatal=True))
    return None


async def papaya_handshake(peer: Peer, room: Room, deadline: float) -> Identity | None:
    """Wait for the 128-byte key until `deadline`. None if refused (nothing is sent then)."""
    with room.handshaking() as closing, trio.move_on_at(deadline):
        event = await peer.receive()
        if isinstance(event, KeyPresented) and room.key_matches(event.key):
            return Identity(None, PapayaTail())
        logger.warning("%s: papayaChat auth failed: wrong key or early close", peer.label)
        return None
    if not closing.cancelled_caught:
        logger.warning("%s: papayaChat auth failed: timeout", peer.label)
    return None


async def refuse(peer: Peer, error: Error) -> None:
    """Best-effort write of a fatal error to a client about to be dropped."""
    with trio.move_on_after(REFUSAL_WRITE_TIMEOUT):
        with suppress(PeerGone):
            await peer.send([error])
