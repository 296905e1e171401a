"""A connection's first seconds in fork mode: sniff the dialect, then authenticate.

This runs in the connection's own process, before it becomes the client's RECV. The decisions
are trio mode's (`papaya_trio.handshake`, `transports.tcp`): the same deadlines measured from
the connection's arrival, the same errors for the native dialect, silence for papayaChat.
"""

from __future__ import annotations

import logging
import time
from contextlib import suppress
from dataclasses import dataclass
from functools import partial

from papaya_trio.accounts import NO_ACCOUNT, Accounts
from papaya_trio.fork.connection import Connection, Expired, Stopped, read_event
from papaya_trio.handshake import (
    AUTH_TIMEOUT,
    REFUSAL_WRITE_TIMEOUT,
    SHUTDOWN,
    accounts_question,
    judge_hello,
    judge_papaya_key,
)
from papaya_trio.keys import key_matches
from papaya_trio.peer import PeerGone
from papaya_trio.protocol.decoding import LineDecoder
from papaya_trio.protocol.events import Error
from papaya_trio.protocol.native import NativeDecoder, encode_line
from papaya_trio.protocol.papaya import PapayaDecoder
from papaya_trio.room import RoomSettings
from papaya_trio.session import Identity

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Admitted:
    """An authenticated client: who it is, its dialect, and the decoder holding what it sent."""

    identity: Identity
    decoder: LineDecoder
    native: bool
    label: str


def admit(
    conn: Connection,
    settings: RoomSettings,
    key: bytes,
    accounts: Accounts | None = None,
    *,
    connected_at: float,
) -> Admitted | None:
    """Sniff and authenticate; None if the client was refused (and told, where it can be)."""
    try:
        first = conn.receive(connected_at + settings.auth_timeout)
    except (Expired, Stopped):
        first = b""
    except PeerGone as exc:
        logger.info("%s: connection lost during handshake: %s", conn.label, exc)
        return None
    if not first:
        logger.info("%s: closed before saying anything", conn.label)
        return None
    assert isinstance(first, bytes)
    sizes = (settings.max_line_bytes, settings.max_message_bytes)
    if first.startswith(b"{"):
        conn.label += " native"
        native = NativeDecoder(*sizes)
        native.receive_data(first)
        deadline = connected_at + settings.auth_timeout
        identity = _native_hello(conn, native, settings, key, accounts, deadline)
        return None if identity is None else Admitted(identity, native, True, conn.label)
    conn.label += " papaya"
    papaya = PapayaDecoder(*sizes)
    papaya.receive_data(first)
    identity = _papaya_key(conn, papaya, key, connected_at + settings.papaya_auth_timeout)
    return None if identity is None else Admitted(identity, papaya, False, conn.label)


def _native_hello(
    conn: Connection,
    decoder: NativeDecoder,
    settings: RoomSettings,
    key: bytes,
    accounts: Accounts | None,
    deadline: float,
) -> Identity | None:
    try:
        event = read_event(conn, decoder, deadline)
    except Stopped:
        refuse(conn, SHUTDOWN)
        return None
    except Expired:
        logger.warning("%s: auth failed: timeout", conn.label)
        refuse(conn, AUTH_TIMEOUT)
        return None
    except PeerGone as exc:
        logger.info("%s: connection lost during handshake: %s", conn.label, exc)
        return None
    assert not isinstance(event, set)  # no other descriptors were waited on
    account = NO_ACCOUNT
    if (question := accounts_question(event, settings.auth)) and accounts is not None:
        account = accounts.check_sync(*question)  # this process may block: it is the client's
    verdict = judge_hello(
        event, partial(key_matches, key), settings.history, auth=settings.auth, account=account
    )
    if isinstance(verdict, Identity):
        return verdict
    logger.warning("%s: auth failed: %s", conn.label, verdict.reason)
    refuse(conn, verdict.error)
    return None


def _papaya_key(
    conn: Connection, decoder: PapayaDecoder, key: bytes, deadline: float
) -> Identity | None:
    try:
        event = read_event(conn, decoder, deadline)
    except Stopped:
        return None
    except Expired:
        logger.warning("%s: papayaChat auth failed: timeout", conn.label)
        return None
    except PeerGone as exc:
        logger.info("%s: connection lost during handshake: %s", conn.label, exc)
        return None
    assert not isinstance(event, set)  # no other descriptors were waited on
    if identity := judge_papaya_key(event, partial(key_matches, key)):
        return identity
    logger.warning("%s: papayaChat auth failed: wrong key or early close", conn.label)
    return None


def refuse(conn: Connection, error: Error) -> None:
    """Best-effort write of a fatal error to a native client about to be dropped."""
    with suppress(Expired, PeerGone):
        conn.send_all(encode_line(error), time.monotonic() + REFUSAL_WRITE_TIMEOUT)
