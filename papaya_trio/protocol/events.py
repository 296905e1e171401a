"""Events: what a client said (ClientEvent) and what the server says (ServerEvent).

Both dialects and every transport turn their bytes into these same objects, so the session
code never knows which dialect or transport it is talking to.
"""

from __future__ import annotations

from dataclasses import dataclass

from papaya_trio.records import Record


# --- client -> server ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Hello:
    """Native hello: who the client is and where its history should start."""

    key: str
    user: str
    since: int | None = None


@dataclass(frozen=True, slots=True)
class KeyPresented:
    """papayaChat dialect: the 128 bytes of key the client opened with."""

    key: bytes


@dataclass(frozen=True, slots=True)
class SendText:
    """A chat message to store. `user` is set only by the papayaChat dialect (it is per line)."""

    text: str
    client_id: str | None = None
    user: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    """Keepalive; answered with a Pong carrying the same id."""

    ping_id: str | int | None = None


@dataclass(frozen=True, slots=True)
class Violation:
    """The client broke the protocol. `fatal` violations end the connection."""

    code: str
    message: str
    fatal: bool = False
    client_id: str | None = None


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The client closed its side. Any unfinished line was discarded, never stored."""


ClientEvent = Hello | KeyPresented | SendText | Ping | Violation | EndOfStream


# --- server -> client ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Welcome:
    """Answer to a good hello; `head` is the newest sequence number at that moment."""

    server: str
    user: str
    head: int


@dataclass(frozen=True, slots=True)
class Message:
    """A stored message; `replay` is true for history sent before live messages."""

    record: Record
    replay: bool = False


@dataclass(frozen=True, slots=True)
class Ack:
    """The client's message `client_id` is stored as `seq`."""

    client_id: str | None
    seq: int


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to Ping."""

    ping_id: str | int | None


@dataclass(frozen=True, slots=True)
class Error:
    """An error report; with `fatal` the server closes the connection after it."""

    code: str
    message: str
    fatal: bool = False
    client_id: str | None = None


ServerEvent = Welcome | Message | Ack | Pong | Error
