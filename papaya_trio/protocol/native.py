"""The native dialect: newline-delimited JSON objects (docs/protocol.md).

`NativeDecoder` turns received bytes into ClientEvents (validating every field, so the session
only sees well-formed requests); `encode_event` turns a ServerEvent into one JSON object, which
the TCP transport ends with a newline and the WebSocket transport sends as one text frame.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Final

from papaya_trio.protocol.decoding import LineDecoder
from papaya_trio.protocol.events import (
    Ack,
    ClientEvent,
    Error,
    Hello,
    Message,
    Ping,
    Pong,
    SendText,
    ServerEvent,
    Violation,
    Welcome,
)
from papaya_trio.protocol.rules import client_id_problem, text_problem, user_problem
from papaya_trio.records import Record

MAX_SEQ: Final = 2**63 - 1
MESSAGE_CACHE: Final = 1024  # encoded messages kept for fan-out


def parse_object(raw: bytes | str, max_message_bytes: int) -> ClientEvent:
    """Parse one JSON object (a line or a WebSocket frame) into a ClientEvent.

    Never raises: anything wrong becomes a Violation saying which rule was broken.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode()
        except UnicodeDecodeError:
            return Violation("bad_utf8", "message is not valid UTF-8")
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return Violation("bad_json", "message is not valid JSON")
    if not isinstance(obj, dict):
        return Violation("bad_json", "message is not a JSON object")
    kind = obj.get("type")
    if kind == "send":
        return _parse_send(obj, max_message_bytes)
    if kind == "hello":
        return _parse_hello(obj)
    if kind == "ping":
        ping_id = obj.get("id")
        if not (ping_id is None or _is_int(ping_id) or _is_short_str(ping_id)):
            return Violation("bad_field", "ping id must be a string of at most 64 characters")
        return Ping(ping_id)
    return Violation("unknown_type", "type must be one of hello, send, ping")


def _parse_send(obj: dict[str, Any], max_message_bytes: int) -> ClientEvent:
    client_id = obj.get("id")
    if client_id is not None and (
        not isinstance(client_id, str) or client_id_problem(client_id) is not None
    ):
        return Violation("bad_field", "id must be 1 to 64 printable ASCII characters")
    text = obj.get("text")
    if not isinstance(text, str):
        return Violation("bad_field", "send needs a text string", client_id=client_id)
    if problem := text_problem(text, max_message_bytes):
        code, why = problem
        return Violation(code, why, client_id=client_id)
    return SendText(text, client_id)


def _parse_hello(obj: dict[str, Any]) -> ClientEvent:
    key, user, since = obj.get("key"), obj.get("user"), obj.get("since")
    if not isinstance(key, str):
        return Violation("bad_field", "hello needs a key string", fatal=True)
    if not isinstance(user, str):
        return Violation("bad_user", "hello needs a user string", fatal=True)
    if why := user_problem(user):
        return Violation("bad_user", why, fatal=True)
    if since is not None and not (_is_int(since) and 0 <= since <= MAX_SEQ):
        return Violation("bad_field", "since must be a non-negative integer", fatal=True)
    return Hello(key, user, since)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_short_str(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 64 and value.isprintable()


class NativeDecoder(LineDecoder):
    """Sans-I/O decoder for a native-dialect byte stream: one JSON object per line."""

    def parse_line(self, line: bytes) -> ClientEvent | None:
        line = line.rstrip(b"\r")
        return parse_object(line, self._max_message_bytes) if line.strip() else None


def event_to_object(event: ServerEvent) -> dict[str, object]:
    """The JSON object for a server event (docs/protocol.md)."""
    match event:
        case Message(record=r):
            return {
                "type": "message",
                "seq": r.seq,
                "time": r.iso_time,
                "user": r.user,
                "text": r.text,
            }
        case Ack(client_id=client_id, seq=seq):
            return {"type": "ack", "id": client_id, "seq": seq}
        case Welcome(server=server, user=user, head=head):
            return {"type": "welcome", "server": server, "user": user, "head": head}
        case Pong(ping_id=ping_id):
            return {"type": "pong", "id": ping_id}
        case Error(code=code, message=message, fatal=fatal, client_id=client_id):
            obj: dict[str, object] = {
                "type": "error",
                "code": code,
                "message": message,
                "fatal": fatal,
            }
            if client_id is not None:
                obj["id"] = client_id
            return obj


def encode_json(event: ServerEvent) -> str:
    """One server event as compact JSON text (a WebSocket frame)."""
    if isinstance(event, Message):
        return _message_json(event.record)
    return _dumps(event_to_object(event))


def encode_line(event: ServerEvent) -> bytes:
    """One server event as a newline-terminated UTF-8 line (the TCP dialect)."""
    if isinstance(event, Message):
        return _message_line(event.record)
    return _dumps(event_to_object(event)).encode() + b"\n"


# A message fans out to every client: encode each record once, not once per recipient. The
# caches are bounded and keyed by the (immutable, hashable) record.
@functools.lru_cache(maxsize=MESSAGE_CACHE)
def _message_json(record: Record) -> str:
    return _dumps(event_to_object(Message(record)))


@functools.lru_cache(maxsize=MESSAGE_CACHE)
def _message_line(record: Record) -> bytes:
    return _message_json(record).encode() + b"\n"


def _dumps(obj: dict[str, object]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
