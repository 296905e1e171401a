"""The native dialect seen from the client side, without I/O (see docs/protocol.md).

This module imports no trio and no socket: it turns bytes into lines, lines into typed server
events and client requests into JSON objects, so its tests need no event loop. Every buffer it
keeps is bounded; a peer that breaks a rule gets a `RemoteProtocolError` naming the rule.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

_T = TypeVar("_T")

#: The server's default limit on one line, newline included; a client line never exceeds it.
MAX_LINE_BYTES = 16384

#: The bound on one line from the server. Its messages are at most `max_message_bytes` of text
#: plus a few fields, so anything near this size is a broken or hostile peer.
MAX_RECEIVE_LINE_BYTES = 256 * 1024


class RemoteProtocolError(Exception):
    """The server broke the protocol: an overlong line, bad JSON, a malformed object."""


class LocalProtocolError(Exception):
    """We were about to break the protocol, e.g. with a message that cannot fit in one line."""


@dataclass(frozen=True, slots=True)
class Welcome:
    """The server accepted our hello; `head` is the newest stored sequence number."""

    server: str
    user: str
    head: int


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One stored chat message; `time` is the server's UTC clock when it was stored."""

    seq: int
    time: datetime
    user: str
    text: str


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


ServerEvent = Welcome | ChatMessage | Ack | Pong | ServerError


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


def hello(key: str, user: str, since: int | None) -> dict[str, object]:
    """The first object of a connection; `since` resumes after that sequence number."""
    obj: dict[str, object] = {"type": "hello", "key": key, "user": user}
    if since is not None:
        obj["since"] = since
    return obj


def send(text: str, message_id: str) -> dict[str, object]:
    """A chat message; the server stores a resend with the same id only once."""
    return {"type": "send", "text": text, "id": message_id}


def ping(ping_id: str) -> dict[str, object]:
    """A keepalive asking for a pong."""
    return {"type": "ping", "id": ping_id}


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
            server=_field(obj, "server", str), user=_field(obj, "user", str), head=_seq(obj, "head")
        )
    if kind == "message":
        return ChatMessage(
            seq=_seq(obj, "seq"),
            time=_time(obj),
            user=_field(obj, "user", str),
            text=_field(obj, "text", str),
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

    The protocol forbids control characters in a message, newlines included, so a paste
    becomes one message per line; tabs become four spaces, other control characters are
    dropped, and blank lines are skipped (the server refuses empty text).
    """
    lines = []
    for raw in text.splitlines():
        line = "".join(ch for ch in raw.replace("\t", "    ") if unicodedata.category(ch) != "Cc")
        if line.strip():
            lines.append(line)
    return lines
