"""Authentication: the native hello (TCP and WebSocket alike) and the papayaChat key.

Both run before the session's nursery exists, so they may write to the peer directly. Replies
to a client that fails to authenticate are written under a short timeout: a client that does
not read cannot hold the server. A hello may prove its name with a personal token
(`accounts`), which is checked in a worker thread before the verdict; whether the name is
already taken is decided when the session joins the room (`Room.joined`), in the same step as
taking it, so two connections can never both win a name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from papaya_trio.accounts import NO_ACCOUNT, TokenCheck
from papaya_trio.peer import REFUSAL_WRITE_TIMEOUT, Peer, refuse
from papaya_trio.protocol.events import ClientEvent, Error, Hello, KeyPresented, Violation
from papaya_trio.room import Room
from papaya_trio.session import Identity, LastN, PapayaTail, Since

logger = logging.getLogger(__name__)

__all__ = ["REFUSAL_WRITE_TIMEOUT", "refuse"]  # re-exported for the transports and fork mode

#: The `auth` option: the room key alone, personal tokens alone, or either.
AUTH_MODES = ("key", "accounts", "both")


SHUTDOWN = Error("shutdown", "the server is shutting down", fatal=True)
AUTH_TIMEOUT = Error("auth_timeout", "no hello arrived in time", fatal=True)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a client is turned away: the error it is told and the reason the log gives."""

    error: Error
    reason: str


def judge_hello(
    event: ClientEvent,
    key_matches: Callable[[str], bool],
    history: int,
    *,
    auth: str = "key",
    account: TokenCheck = NO_ACCOUNT,
    dialect: str = "native",
) -> Identity | Refusal:
    """Decide on a native client's first event (pure: trio and fork mode share it).

    `account` is what the accounts say about the hello's name and token (see
    `accounts_question`). With `auth` "accounts" or "both", a registered name needs its token;
    with "accounts" every name does; with "key" and "both" the room key admits names nobody
    registered, unverified.
    """
    match event:
        case Hello(key=key, user=user, since=since, token=token):
            start = LastN(history) if since is None else Since(since)
            if auth != "key" and account.registered:
                if not account.valid:
                    error = Error("bad_token", f"the token for {user} is missing or wrong", True)
                    return Refusal(error, f"bad token ({user!r})")
                return Identity(user, start, verified=True, dialect=dialect)
            if auth == "accounts" or (auth == "both" and token is not None):
                error = Error("bad_token", f"no account is named {user}", True)
                return Refusal(error, f"no account ({user!r})")
            if key is None or not key_matches(key):
                return Refusal(Error("bad_key", "the key is wrong", True), f"wrong key ({user!r})")
            return Identity(user, start, dialect=dialect)
        case Violation(code=code, message=message):
            return Refusal(Error(code, message, fatal=True), message)
        case _:
            error = Error("not_authenticated", "the first message must be a hello", True)
            return Refusal(error, "no hello")


def judge_papaya_key(event: ClientEvent, key_matches: Callable[[bytes], bool]) -> Identity | None:
    """Decide on a papayaChat client's first event: its key, or a refusal (None)."""
    if isinstance(event, KeyPresented) and key_matches(event.key):
        return Identity(None, PapayaTail(), dialect="papaya")
    return None


def accounts_question(event: ClientEvent, auth: str) -> tuple[str, str | None] | None:
    """The (name, token) to ask the accounts about before judging `event`, if any."""
    if auth == "key" or not isinstance(event, Hello):
        return None
    return event.user, event.token


async def native_handshake(
    peer: Peer, room: Room, deadline: float, *, dialect: str = "native"
) -> Identity | None:
    """Wait for a good hello until `deadline` (trio time). None if the client was refused."""
    settings = room.settings
    with room.handshaking() as closing, trio.move_on_at(deadline):
        event = await peer.receive()
        account = NO_ACCOUNT
        if (question := accounts_question(event, settings.auth)) and room.accounts is not None:
            account = await room.accounts.check(*question)
        verdict = judge_hello(
            event,
            room.key_matches,
            settings.history,
            auth=settings.auth,
            account=account,
            dialect=dialect,
        )
        if isinstance(verdict, Identity):
            return verdict
        logger.warning("%s: auth failed: %s", peer.label, verdict.reason)
        room.metrics.refuse(verdict.error.code)
        await refuse(peer, verdict.error)
        return None
    if closing.cancelled_caught:
        await refuse(peer, SHUTDOWN)
        return None
    logger.warning("%s: auth failed: timeout", peer.label)
    room.metrics.refuse(AUTH_TIMEOUT.code)
    await refuse(peer, AUTH_TIMEOUT)
    return None


async def papaya_handshake(peer: Peer, room: Room, deadline: float) -> Identity | None:
    """Wait for the 128-byte key until `deadline`. None if refused (nothing is sent then)."""
    with room.handshaking() as closing, trio.move_on_at(deadline):
        event = await peer.receive()
        if identity := judge_papaya_key(event, room.key_matches):
            return identity
        logger.warning("%s: papayaChat auth failed: wrong key or early close", peer.label)
        room.metrics.refuse("bad_key" if isinstance(event, KeyPresented) else "no_key")
        return None
    if not closing.cancelled_caught:
        logger.warning("%s: papayaChat auth failed: timeout", peer.label)
        room.metrics.refuse(AUTH_TIMEOUT.code)
    return None
