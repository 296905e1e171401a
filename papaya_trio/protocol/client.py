"""The native dialect seen from the client side, without I/O (see docs/protocol.md).

One module for every client that speaks the native dialect: the terminal client
(`clients/papaya_clients/terminal`), the bench's chat load generator and, where it fits, the
simulation. It imports no trio, socket or os: `ClientDecoder` turns received bytes into
typed server events (`Welcome`, `ChatMessage`, `Ack`, `Pong`, `ServerError`, `Presence`,
`Typing`, `History`), and `hello`, `send`, `ping`, `typing` and `history` build the client's
objects, which `encode` turns into a line. Its tests need no event loop.

Every buffer is bounded; a peer that breaks a rule gets a `RemoteProtocolError` naming the
rule. A first line that is an HTTP status line (the client was pointed at the HTTP port) is a
`WrongService`, so the user hears at once what is wrong instead of waiting for a welcome.
Unknown object types are skipped and unknown fields ignored, so a newer server may add some.
"""

from __future__ import annotations

import itertools
import json
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypeVar

_T = TypeVar("_T")

#: The server's default limit on one line, newline included; a client line never exceeds it.
MAX_LINE_BYTES = 16384

#: The bound on one line from the server. Its messages are at most `max_message_bytes` of text
#: plus a few fields, so anything near this size is a broken or hostile peer.
MAX_RECEIVE_LINE_BYTES = 256 * 1024

#: The most messages one history request may ask for (the server clamps larger limits).
MAX_HISTORY_LIMIT = 200

#: A typing hint is sent at most this often while the user types (seconds).
TYPING_INTERVAL = 3.0


class RemoteProtocolError(Exception):
    """The server broke the protocol: an overlong line, bad JSON, a malformed object."""


class WrongService(RemoteProtocolError):
    """The peer speaks another protocol (e.g. HTTP): retrying the same port will not help."""


class LocalProtocolError(Exception):
    """We were about to break the protocol, e.g. with a message that cannot fit in one line."""


@dataclass(frozen=True, slots=True)
class Member:
    """One name in the room (`user` None: the papayaChat connections, which name no one)."""

    user: str | None
    verified: bool = False
    dialect: str = "native"
    count: int = 1


@dataclass(frozen=True, slots=True)
class Welcome:
    """The server accepted our hello; `head` is the newest stored sequence number, `first`
    the oldest (0 in an empty room), `online` who is connected (ourselves included)."""

    server: str
    user: str
    head: int
    first: int = 0
    verified: bool = False
    online: tuple[Member, ...] = ()


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One stored chat message; `time` is the server's UTC clock when it was stored.

    `action`: a /me action, `text` without the name (`waves`); `dialect`: "papaya" when it came
    from the papayaChat dialect (whose names nobody verifies); `verified`: the sender holds a
    personal token. `text` may hold newlines (a multi-line message).
    """

    seq: int
    time: datetime
    user: str
    text: str
    action: bool = False
    dialect: str = "native"
    verified: bool = False


@dataclass(frozen=True, slots=True)
class Ack:
    """The message sent with `id` (None if it had none) was stored as `seq`."""

    id: str | None
    seq: int


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to our ping with the same `id`."""

    id: str | None


@dataclass(frozen=True, slots=True)
class ServerError:
    """The server reports a broken rule; after a `fatal` one it closes the connection."""

    code: str
    message: str
    fatal: bool
    id: str | None


@dataclass(frozen=True, slots=True)
class Presence:
    """Someone joined or left (`user` None: a papayaChat connection)."""

    event: Literal["join", "leave"]
    user: str | None
    verified: bool
    dialect: str


@dataclass(frozen=True, slots=True)
class Typing:
    """`user` is typing (a hint; the server relays at most one per user per 2 s)."""

    user: str


@dataclass(frozen=True, slots=True)
class History:
    """The answer to a history request: the newest messages with `seq < before`, oldest first."""

    id: str | None
    before: int
    messages: tuple[ChatMessage, ...]
    first: int

    @property
    def at_start(self) -> bool:
        """Whether nothing older than these messages is stored."""
        return not self.messages or self.messages[0].seq <= self.first


ServerEvent = Welcome | ChatMessage | Ack | Pong | ServerError | Presence | Typing | History


class LineBuffer:
    """Split a byte stream into lines, holding at most `max_line_bytes` of an unfinished line.

    Scanning is linear: each byte is searched for a newline once.
    """

    def __init__(self, max_line_bytes: int = MAX_RECEIVE_LINE_BYTES) -> None:
        self._max = max_line_bytes
        self._data = bytearray()
        self._scanned = 0

    def __repr__(self) -> str:
        return f"<LineBuffer {len(self._data)}/{self._max} bytes>"

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add bytes read from the stream."""
        self._data += data

    def next_line(self) -> bytes | None:
        """Return the next complete line without its newline, or None if there is none yet.

        Raises `RemoteProtocolError` when a line grows past the bound without a newline.
        """
        end = self._data.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._data)
            if self._scanned >= self._max:
                raise RemoteProtocolError(
                    f"server line longer than {self._max} bytes without a newline"
                )
            return None
        if end + 1 > self._max:
            raise RemoteProtocolError(f"server line longer than {self._max} bytes")
        line = bytes(self._data[:end])
        del self._data[: end + 1]
        self._scanned = 0
        return line

    @property
    def pending_bytes(self) -> int:
        """How many bytes of an unfinished line are held."""
        return len(self._data)


def encode(obj: dict[str, object]) -> bytes:
    """Encode one client object as a line of UTF-8 JSON, newline included."""
    line = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
    if len(line) > MAX_LINE_BYTES:
        raise LocalProtocolError(f"object is {len(line)} bytes, over the {MAX_LINE_BYTES} limit")
    return line


def hello(
    key: str | None, user: str, since: int | None, *, token: str | None = None
) -> dict[str, object]:
    """The first object of a connection; `since` resumes after that sequence number, `token`
    is a personal token (with `auth = "accounts"` the key may be None)."""
    obj: dict[str, object] = {"type": "hello", "user": user}
    if key is not None:
        obj["key"] = key
    if token is not None:
        obj["token"] = token
    if since is not None:
        obj["since"] = since
    return obj


def send(text: str, message_id: str | None, *, action: bool = False) -> dict[str, object]:
    """A chat message; the server stores a resend with the same id only once. `action`: a
    /me action, `text` being the action without the name."""
    obj: dict[str, object] = {"type": "send", "text": text}
    if message_id is not None:
        obj["id"] = message_id
    if action:
        obj["action"] = True
    return obj


def typing() -> dict[str, object]:
    """A hint that the user is typing; send at most one per `TYPING_INTERVAL`."""
    return {"type": "typing"}


def history(before: int, limit: int, request_id: str | None = None) -> dict[str, object]:
    """Ask for up to `limit` (1..`MAX_HISTORY_LIMIT`) messages older than `before`."""
    if not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise LocalProtocolError(f"history limit {limit} is not 1..{MAX_HISTORY_LIMIT}")
    obj: dict[str, object] = {"type": "history", "before": before, "limit": limit}
    if request_id is not None:
        obj["id"] = request_id
    return obj


def ping(ping_id: str) -> dict[str, object]:
    """A keepalive asking for a pong."""
    return {"type": "ping", "id": ping_id}


#: What the first line from an HTTP server starts with.
_HTTP_STATUS = b"HTTP/"
WRONG_SERVICE_HTTP = "this port speaks HTTP, not papaya-trio: use the TCP port"


class ClientDecoder:
    """Received bytes in, server events out: `receive_data`, then `next_event` until None.

    Blank lines are skipped, unknown types too; the first line is checked for an HTTP status
    line (`WrongService`).
    """

    def __init__(self, max_line_bytes: int = MAX_RECEIVE_LINE_BYTES) -> None:
        self._lines = LineBuffer(max_line_bytes)
        self._first = True

    def __repr__(self) -> str:
        return f"<ClientDecoder {self._lines!r}>"

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add bytes read from the stream."""
        self._lines.receive_data(data)

    def next_object(self) -> dict[str, object] | None:
        """The next complete JSON object, or None until more data arrives."""
        while (line := self._lines.next_line()) is not None:
            if self._first:
                self._first = False
                check_first_line(line)
            if line.strip():
                return parse_json(line)
        return None

    def next_event(self) -> ServerEvent | None:
        """The next event of a known type, or None until more data arrives."""
        while (obj := self.next_object()) is not None:
            if (event := parse_event(obj)) is not None:
                return event
        return None

    @property
    def pending_bytes(self) -> int:
        """How many bytes of an unfinished line are held."""
        return self._lines.pending_bytes


def check_first_line(data: bytes | str) -> None:
    """Raise `WrongService` when the server's first line shows it speaks HTTP."""
    raw = data.encode(errors="replace") if isinstance(data, str) else data
    if raw.startswith(_HTTP_STATUS):
        raise WrongService(WRONG_SERVICE_HTTP)


def parse_json(data: bytes | str) -> dict[str, object]:
    """Decode one server object; raise `RemoteProtocolError` if it is not a JSON object."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RemoteProtocolError(f"server sent invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("server sent JSON that is not an object")
    return obj


def parse_event(obj: dict[str, object]) -> ServerEvent | None:
    """Turn a server object into an event; None for a type this client does not know.

    Unknown types are skipped rather than fatal so that a newer server can add some.
    """
    kind = obj.get("type")
    if kind == "welcome":
        return Welcome(
            server=_field(obj, "server", str),
            user=_field(obj, "user", str),
            head=_seq(obj, "head"),
            first=_optional_seq(obj, "first"),
            verified=_flag(obj, "verified"),
            online=_members(obj),
        )
    if kind == "message":
        return _message(obj)
    if kind == "presence":
        event = obj.get("event")
        if event not in ("join", "leave"):
            raise RemoteProtocolError("server presence has a bad 'event' field")
        return Presence(
            event="join" if event == "join" else "leave",
            user=_name(obj),
            verified=_flag(obj, "verified"),
            dialect=_dialect(obj),
        )
    if kind == "typing":
        return Typing(user=_field(obj, "user", str))
    if kind == "history":
        raw = obj.get("messages")
        if not isinstance(raw, list) or len(raw) > MAX_HISTORY_LIMIT:
            raise RemoteProtocolError("server history has a bad 'messages' field")
        messages = tuple(_message(_object(item, "history")) for item in raw)
        if any(a.seq >= b.seq for a, b in itertools.pairwise(messages)):
            raise RemoteProtocolError("server history is not in sequence order")
        before = _seq(obj, "before")
        if messages and messages[-1].seq >= before:
            raise RemoteProtocolError("server history holds a message not before 'before'")
        return History(
            id=_optional_str(obj, "id"),
            before=before,
            messages=messages,
            first=_optional_seq(obj, "first"),
        )
    if kind == "ack":
        return Ack(id=_optional_str(obj, "id"), seq=_seq(obj, "seq"))
    if kind == "pong":
        return Pong(id=_optional_str(obj, "id"))
    if kind == "error":
        fatal = obj.get("fatal", False)
        return ServerError(
            code=_field(obj, "code", str),
            message=str(obj.get("message", "")),
            fatal=fatal if isinstance(fatal, bool) else False,
            id=_optional_str(obj, "id"),
        )
    return None


def _field(obj: dict[str, object], name: str, kind: type[_T]) -> _T:
    value = obj.get(name)
    # bool is a subclass of int, but `"seq": true` is not a sequence number.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RemoteProtocolError(f"server {obj.get('type')} has a bad {name!r} field")
    return value


def _seq(obj: dict[str, object], name: str) -> int:
    value = _field(obj, name, int)
    if value < 0:
        raise RemoteProtocolError(f"server {obj.get('type')} has a negative {name!r}")
    return value


def _optional_seq(obj: dict[str, object], name: str) -> int:
    """A sequence number an older server may not send (0 then)."""
    return 0 if name not in obj else _seq(obj, name)


def _flag(obj: dict[str, object], name: str) -> bool:
    return obj.get(name) is True


def _name(obj: dict[str, object]) -> str | None:
    value = obj.get("user")
    if value is not None and not isinstance(value, str):
        raise RemoteProtocolError(f"server {obj.get('type')} has a bad 'user' field")
    return value


def _dialect(obj: dict[str, object]) -> str:
    value = obj.get("dialect", "native")
    return value if isinstance(value, str) else "native"


def _object(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise RemoteProtocolError(f"server {where} holds something that is not an object")
    return value


def _message(obj: dict[str, object]) -> ChatMessage:
    return ChatMessage(
        seq=_seq(obj, "seq"),
        time=_time(obj),
        user=_field(obj, "user", str),
        text=_field(obj, "text", str),
        action=_flag(obj, "action"),
        dialect=_dialect(obj),
        verified=_flag(obj, "verified"),
    )


def _members(obj: dict[str, object]) -> tuple[Member, ...]:
    raw = obj.get("online", [])
    if not isinstance(raw, list):
        raise RemoteProtocolError("server welcome has a bad 'online' field")
    members = []
    for item in raw:
        entry = _object(item, "welcome")
        count = entry.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise RemoteProtocolError("server welcome has a bad member 'count'")
        members.append(
            Member(
                user=_name(entry),
                verified=_flag(entry, "verified"),
                dialect=_dialect(entry),
                count=count,
            )
        )
    return tuple(members)


def _optional_str(obj: dict[str, object], name: str) -> str | None:
    value = obj.get(name)
    return value if isinstance(value, str) else None


def _time(obj: dict[str, object]) -> datetime:
    raw = _field(obj, "time", str)
    try:
        stamp = datetime.fromisoformat(raw)
    except ValueError:
        raise RemoteProtocolError(f"server message has a bad time {raw!r}") from None
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def message_lines(text: str) -> list[str]:
    """Split typed or pasted text into sendable messages, one per line.

    A paste becomes one message per line (servers before issue 13 refuse a newline in a
    text); tabs become four spaces, other control characters are dropped, and blank lines are
    skipped (the server refuses empty text).
    """
    lines = []
    for raw in text.splitlines():
        line = "".join(ch for ch in raw.replace("\t", "    ") if unicodedata.category(ch) != "Cc")
        if line.strip():
            lines.append(line)
    return lines
