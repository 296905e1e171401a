"""Authentication: the native hello (TCP and WebSocket alike) and the papayaChat key.

Both run before the session's nursery exists, so they may write to the peer directly. Replies
to a client that fails to authenticate are written under a short timeout: a client that does
not read cannot hold the server. A failure is logged at debug level only and counted on the
connection's admission ticket (a wrong key also spends a token of its address's wrong-key
bucket); admission control logs a summary line per interval instead of a line per attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

import trio

from papaya_trio.admission import Ticket
from papaya_trio.peer import Peer, PeerGone
from papaya_trio.protocol.events import ClientEvent, Error, Hello, KeyPresented, Violation
from papaya_trio.room import Room
from papaya_trio.session import Identity, LastN, PapayaTail, Since

logger = logging.getLogger(__name__)

REFUSAL_WRITE_TIMEOUT = 2.0


SHUTDOWN = Error("shutdown", "the server is shutting down", fatal=True)
AUTH_TIMEOUT = Error("auth_timeout", "no hello arrived in time", fatal=True)
SERVER_FULL = Error("server_full", "the server is full", fatal=True)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a client is turned away: the error it is told and the reason the log gives."""

    error: Error
    reason: str


def judge_hello(
    event: ClientEvent, key_matches: Callable[[str], bool], history: int
) -> Identity | Refusal:
    """Decide on a native client's first event (pure: trio and fork mode share it)."""
    match event:
        case Hello(key=key, user=user, since=since):
            if not key_matches(key):
                return Refusal(Error("bad_key", "the key is wrong", True), f"wrong key ({user!r})")
            return Identity(user, LastN(history) if since is None else Since(since))
        case Violation(code=code, message=message):
            return Refusal(Error(code, message, fatal=True), message)
        case _:
            error = Error("not_authenticated", "the first message must be a hello", True)
            return Refusal(error, "no hello")


def judge_papaya_key(event: ClientEvent, key_matches: Callable[[bytes], bool]) -> Identity | None:
    """Decide on a papayaChat client's first event: its key, or a refusal (None)."""
    if isinstance(event, KeyPresented) and key_matches(event.key):
        return Identity(None, PapayaTail())
    return None


async def native_handshake(
    peer: Peer, room: Room, deadline: float, ticket: Ticket
) -> Identity | None:
    """Wait for a good hello until `deadline` (trio time). None if the client was refused."""
    with room.handshaking() as closing, trio.move_on_at(deadline):
        verdict = judge_hello(await peer.receive(), room.key_matches, room.settings.history)
        if isinstance(verdict, Identity):
            return verdict
        logger.debug("%s: auth failed: %s", peer.label, verdict.reason)
        room.metrics.refuse(verdict.error.code)
        if verdict.error.code == "bad_key":
            ticket.wrong_key()
        else:
            ticket.note(f"refused: {verdict.error.code}")
        await refuse(peer, verdict.error)
        return None
    if closing.cancelled_caught:
        await refuse(peer, SHUTDOWN)
        return None
    logger.debug("%s: auth failed: timeout", peer.label)
    room.metrics.refuse(AUTH_TIMEOUT.code)
    ticket.note("auth timeout")
    await refuse(peer, AUTH_TIMEOUT)
    return None


async def papaya_handshake(
    peer: Peer, room: Room, deadline: float, ticket: Ticket
) -> Identity | None:
    """Wait for the 128-byte key until `deadline`. None if refused (nothing is sent then)."""
    with room.handshaking() as closing, trio.move_on_at(deadline):
        event = await peer.receive()
        if identity := judge_papaya_key(event, room.key_matches):
            return identity
        logger.debug("%s: papayaChat auth failed: wrong key or early close", peer.label)
        if isinstance(event, KeyPresented):
            room.metrics.refuse("bad_key")
            ticket.wrong_key()
        else:
            room.metrics.refuse("no_key")
            ticket.note("closed before the key")
        return None
    if not closing.cancelled_caught:
        logger.debug("%s: papayaChat auth failed: timeout", peer.label)
        room.metrics.refuse(AUTH_TIMEOUT.code)
        ticket.note("auth timeout")
    return None


async def refuse(peer: Peer, error: Error) -> None:
    """Best-effort write of a fatal error to a client about to be dropped."""
    with trio.move_on_after(REFUSAL_WRITE_TIMEOUT):
        with suppress(PeerGone):
            await peer.send([error])
