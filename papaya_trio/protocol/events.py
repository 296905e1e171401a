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
    """Native hello: who the client is, how it proves it (the room key, a personal token or
    both), and where its history should start."""

    key: str | None
    user: str
    since: int | None = None
    token: str | None = None


@dataclass(frozen=True, slots=True)
class KeyPresented:
    """papayaChat dialect: the 128 bytes of key the client opened with."""

    key: bytes


@dataclass(frozen=True, slots=True)
class SendText:
    """A chat message to store. `user` is set only by the papayaChat dialect (it is per line);
    `action` marks a `/me` action."""

    text: str
    client_id: str | None = None
    user: str | None = None
    action: bool = False


@dataclass(frozen=True, slots=True)
class Typing:
    """A hint that the user is typing (native dialect)."""


@dataclass(frozen=True, slots=True)
class FetchHistory:
    """A request for up to `limit` stored messages with sequence numbers below `before`."""

    before: int
    limit: int
    request_id: str | None = None


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


ClientEvent = (
    Hello | KeyPresented | SendText | Typing | FetchHistory | Ping | Violation | EndOfStream
)


# --- server -> client ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Member:
    """One name in the welcome's list of who is online (`user` None: papayaChat clients)."""

    user: str | None
    verified: bool
    dialect: str
    count: int


@dataclass(frozen=True, slots=True)
class Welcome:
    """Answer to a good hello; `head` is the newest sequence number at that moment, `first`
    the oldest (0 for an empty room). `online` is None where presence is not tracked (fork
    mode), and then left out of the welcome."""

    server: str
    user: str
    head: int
    first: int = 0
    verified: bool = False
    online: tuple[Member, ...] | None = None


@dataclass(frozen=True, slots=True)
class Presence:
    """A connection joined or left (`event` is "join" or "leave")."""

    event: str
    user: str | None
    verified: bool
    dialect: str


@dataclass(frozen=True, slots=True)
class TypingNotice:
    """`user` is typing."""

    user: str


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """The answer to FetchHistory: the newest stored messages below `before`, oldest first."""

    request_id: str | None
    before: int
    records: tuple[Record, ...]
    first: int


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


ServerEvent = Welcome | Message | Ack | Pong | Error | Presence | TypingNotice | HistoryPage
