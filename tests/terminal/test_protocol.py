"""The client's sans-I/O protocol code: no event loop needed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from papaya_clients.terminal import protocol
from papaya_clients.terminal.protocol import (
    Ack,
    ChatMessage,
    LineBuffer,
    LocalProtocolError,
    Pong,
    RemoteProtocolError,
    ServerError,
    Welcome,
)


def test_line_buffer_splits_lines_across_chunks() -> None:
    lines = LineBuffer(100)
    lines.receive_data(b'{"a":1}\n{"b"')
    assert lines.next_line() == b'{"a":1}'
    assert lines.next_line() is None
    lines.receive_data(b":2}\n\n")
    assert lines.next_line() == b'{"b":2}'
    assert lines.next_line() == b""
    assert lines.next_line() is None
    assert lines.pending_bytes == 0


def test_line_buffer_refuses_a_line_past_its_bound() -> None:
    lines = LineBuffer(10)
    lines.receive_data(b"0123456789")
    with pytest.raises(RemoteProtocolError, match="longer than 10 bytes"):
        lines.next_line()


def test_line_buffer_refuses_a_complete_overlong_line() -> None:
    lines = LineBuffer(10)
    lines.receive_data(b"0123456789abc\n")
    with pytest.raises(RemoteProtocolError):
        lines.next_line()


def test_encode_is_one_compact_utf8_line() -> None:
    line = protocol.encode(protocol.send("héllo 漢字", "x-1"))
    assert line == '{"type":"send","text":"héllo 漢字","id":"x-1"}\n'.encode()


def test_encode_refuses_what_cannot_fit_in_a_line() -> None:
    with pytest.raises(LocalProtocolError):
        protocol.encode(protocol.send("x" * protocol.MAX_LINE_BYTES, "x-1"))


def test_hello_has_since_only_when_resuming() -> None:
    assert "since" not in protocol.hello("k", "alice", None)
    assert protocol.hello("k", "alice", 0)["since"] == 0


@pytest.mark.parametrize(
    ("obj", "event"),
    [
        (
            {"type": "welcome", "server": "s", "user": "alice", "head": 3},
            Welcome("s", "alice", 3),
        ),
        (
            {
                "type": "message",
                "seq": 4,
                "time": "2026-11-26T14:28:25.123Z",
                "user": "bob",
                "text": "hi",
                "extra": "ignored",
            },
            ChatMessage(4, datetime(2026, 11, 26, 14, 28, 25, 123000, tzinfo=UTC), "bob", "hi"),
        ),
        ({"type": "ack", "id": "c-1", "seq": 4}, Ack("c-1", 4)),
        ({"type": "ack", "id": None, "seq": 4}, Ack(None, 4)),
        ({"type": "pong", "id": "p-1"}, Pong("p-1")),
        (
            {"type": "error", "code": "bad_key", "message": "no", "fatal": True, "id": None},
            ServerError("bad_key", "no", True, None),
        ),
        ({"type": "from_the_future"}, None),
    ],
)
def test_parse_event(obj: dict[str, object], event: object) -> None:
    assert protocol.parse_event(obj) == event


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "message", "seq": True, "time": "2026-11-26T14:28:25Z", "user": "a", "text": ""},
        {"type": "message", "seq": 1, "time": "yesterday", "user": "a", "text": "x"},
        {"type": "message", "seq": -1, "time": "2026-11-26T14:28:25Z", "user": "a", "text": "x"},
        {"type": "ack", "id": "x"},
        {"type": "welcome", "server": "s", "user": 3, "head": 0},
    ],
)
def test_parse_event_refuses_malformed_objects(obj: dict[str, object]) -> None:
    with pytest.raises(RemoteProtocolError):
        protocol.parse_event(obj)


@pytest.mark.parametrize("data", [b"[1]", b"{nope", b"\xff"])
def test_parse_json_refuses_non_objects(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        protocol.parse_json(data)


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("hello", ["hello"]),
        ("one\ntwo\r\nthree\r", ["one", "two", "three"]),
        ("a\n\n  \nb", ["a", "b"]),
        ("tab\there", ["tab    here"]),
        ("bell\x07 and \x1b[31mred", ["bell and [31mred"]),
        ("漢字 🎉", ["漢字 🎉"]),
        ("", []),
    ],
)
def test_message_lines_makes_sendable_lines(text: str, lines: list[str]) -> None:
    assert protocol.message_lines(text) == lines
