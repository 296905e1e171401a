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
    FetchHistory,
    Hello,
    HistoryPage,
    Message,
    Ping,
    Pong,
    Presence,
    SendText,
    ServerEvent,
    Typing,
    TypingNotice,
    Violation,
    Welcome,
)
from papaya_trio.protocol.rules import (
    client_id_problem,
    text_problem,
    token_problem,
    user_problem,
)
from papaya_trio.records import Record

MAX_SEQ: Final = 2**63 - 1
MESSAGE_CACHE: Final = 1024  # encoded messages kept for fan-out
NOTICE_CACHE: Final = 64  # encoded presence and typing notices kept for fan-out
MAX_HISTORY_LIMIT: Final = 200  # a larger history limit is clamped to this


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
    if kind == "typing":
        return Typing()
    if kind == "history":
        return _parse_history(obj)
    if kind == "ping":
        ping_id = obj.get("id")
        if not (ping_id is None or _is_int(ping_id) or _is_short_str(ping_id)):
            return Violation("bad_field", "ping id must be a string of at most 64 characters")
        return Ping(ping_id)
    return Violation("unknown_type", "type must be one of hello, send, typing, history, ping")


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
    action = obj.get("action", False)
    if not isinstance(action, bool):
        return Violation("bad_field", "action must be true or false", client_id=client_id)
    return SendText(text, client_id, action=action)


def _parse_history(obj: dict[str, Any]) -> ClientEvent:
    before, limit, request_id = obj.get("before"), obj.get("limit"), obj.get("id")
    if not (request_id is None or _is_short_str(request_id)):
        return Violation("bad_history", "history id must be a string of at most 64 characters")
    if not (isinstance(before, int) and _is_int(before) and 0 <= before <= MAX_SEQ):
        why = "history needs before, a non-negative integer"
        return Violation("bad_history", why, client_id=request_id)
    if not (isinstance(limit, int) and _is_int(limit) and limit >= 1):
        why = f"history needs limit, an integer from 1 to {MAX_HISTORY_LIMIT}"
        return Violation("bad_history", why, client_id=request_id)
    return FetchHistory(before, min(limit, MAX_HISTORY_LIMIT), request_id)


def history_span(before: int, limit: int, head: int) -> range:
    """The sequence numbers a history request answers: the newest `limit` below `before`."""
    end = min(before, head + 1)
    return range(max(1, end - limit), max(1, end))


def _parse_hello(obj: dict[str, Any]) -> ClientEvent:
    key, user, since = obj.get("key"), obj.get("user"), obj.get("since")
    token = obj.get("token")
    if token is not None and not (isinstance(token, str) and token_problem(token) is None):
        return Violation("bad_token", "token must be a string of printable ASCII", fatal=True)
    if not (isinstance(key, str) or (key is None and token is not None)):
        return Violation("bad_field", "hello needs a key string or a token", fatal=True)
    if not isinstance(user, str):
        return Violation("bad_user", "hello needs a user string", fatal=True)
    if why := user_problem(user):
        return Violation("bad_user", why, fatal=True)
    if since is not None and not (_is_int(since) and 0 <= since <= MAX_SEQ):
        return Violation("bad_field", "since must be a non-negative integer", fatal=True)
    return Hello(key, user, since, token)


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
        case Message(record=record):
            return _message_object(record)
        case Ack(client_id=client_id, seq=seq):
            return {"type": "ack", "id": client_id, "seq": seq}
        case Welcome():
            return _welcome_object(event)
        case Presence(event=kind, user=user, verified=verified, dialect=dialect):
            return {
                "type": "presence",
                "event": kind,
                "user": user,
                "verified": verified,
                "dialect": dialect,
            }
        case TypingNotice(user=user):
            return {"type": "typing", "user": user}
        case HistoryPage(request_id=request_id, before=before, records=records, first=first):
            return {
                "type": "history",
                "id": request_id,
                "before": before,
                "messages": [_message_object(record) for record in records],
                "first": first,
            }
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


def _message_object(record: Record) -> dict[str, object]:
    obj: dict[str, object] = {
        "type": "message",
        "seq": record.seq,
        "time": record.iso_time,
        "user": record.user,
        "text": record.text,
    }
    if record.action:
        obj["action"] = True
    if record.dialect is not None:
        obj["dialect"] = record.dialect
    if record.verified:
        obj["verified"] = True
    return obj


def _welcome_object(welcome: Welcome) -> dict[str, object]:
    obj: dict[str, object] = {
        "type": "welcome",
        "server": welcome.server,
        "user": welcome.user,
        "head": welcome.head,
        "first": welcome.first,
        "verified": welcome.verified,
    }
    if welcome.online is not None:
        obj["online"] = [
            {"user": m.user, "verified": m.verified, "dialect": m.dialect, "count": m.count}
            for m in welcome.online
        ]
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
    if isinstance(event, Presence | TypingNotice):
        return _notice_line(event)
    return _dumps(event_to_object(event)).encode() + b"\n"


# A message fans out to every client: encode each record once, not once per recipient. The
# caches are bounded and keyed by the (immutable, hashable) record.
@functools.lru_cache(maxsize=MESSAGE_CACHE)
def _message_json(record: Record) -> str:
    return _dumps(event_to_object(Message(record)))


@functools.lru_cache(maxsize=MESSAGE_CACHE)
def _message_line(record: Record) -> bytes:
    return _message_json(record).encode() + b"\n"


# A presence or typing notice goes to everybody else in the room at once: the same.
@functools.lru_cache(maxsize=NOTICE_CACHE)
def _notice_line(notice: Presence | TypingNotice) -> bytes:
    return _dumps(event_to_object(notice)).encode() + b"\n"


def _dumps(obj: dict[str, object]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
