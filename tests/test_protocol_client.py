"""The client side of the native dialect (`papaya_trio.protocol.client`): no event loop."""

from __future__ import annotations

import ast
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from papaya_trio.protocol import client as protocol
from papaya_trio.protocol.client import (
    Ack,
    ChatMessage,
    ClientDecoder,
    History,
    LineBuffer,
    LocalProtocolError,
    Member,
    Pong,
    Presence,
    RemoteProtocolError,
    ServerError,
    Typing,
    Welcome,
    WrongService,
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


TIME = "2026-11-26T14:28:25Z"
STAMP = datetime(2026, 11, 26, 14, 28, 25, tzinfo=UTC)


def wire(obj: dict[str, object]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def test_new_encoders() -> None:
    assert protocol.hello("k", "alice", 3, token="t") == {
        "type": "hello",
        "user": "alice",
        "key": "k",
        "token": "t",
        "since": 3,
    }
    assert "key" not in protocol.hello(None, "alice", None, token="t")
    assert protocol.send("waves", "x-1", action=True) == {
        "type": "send",
        "text": "waves",
        "id": "x-1",
        "action": True,
    }
    assert "action" not in protocol.send("hi", "x-1")
    assert protocol.typing() == {"type": "typing"}
    assert protocol.history(40, 50, "h-1") == {
        "type": "history",
        "before": 40,
        "limit": 50,
        "id": "h-1",
    }


@pytest.mark.parametrize("limit", [0, -1, protocol.MAX_HISTORY_LIMIT + 1])
def test_history_limit_outside_the_protocol_is_refused(limit: int) -> None:
    with pytest.raises(LocalProtocolError):
        protocol.history(10, limit)


def test_decoder_yields_the_new_events_across_chunks() -> None:
    data = b"".join(
        wire(obj)
        for obj in (
            {
                "type": "welcome",
                "server": "s",
                "user": "alice",
                "head": 9,
                "first": 2,
                "verified": True,
                "online": [
                    {"user": "alice", "verified": True, "dialect": "native", "count": 2},
                    {"user": None, "verified": False, "dialect": "papaya", "count": 1},
                ],
            },
            {
                "type": "presence",
                "event": "join",
                "user": "bob",
                "verified": False,
                "dialect": "websocket",
            },
            {"type": "typing", "user": "bob"},
            {
                "type": "message",
                "seq": 10,
                "time": TIME,
                "user": "bob",
                "text": "waves",
                "action": True,
                "verified": True,
            },
            {
                "type": "message",
                "seq": 11,
                "time": TIME,
                "user": "tom",
                "text": "a\nb",
                "dialect": "papaya",
            },
            {
                "type": "history",
                "id": "h-1",
                "before": 4,
                "first": 2,
                "messages": [
                    {"type": "message", "seq": 2, "time": TIME, "user": "bob", "text": "old"},
                    {"type": "message", "seq": 3, "time": TIME, "user": "bob", "text": "older"},
                ],
            },
            {"type": "shout"},
        )
    )
    decoder = ClientDecoder()
    events = []
    for start in range(0, len(data), 7):  # in small chunks: lines split anywhere
        decoder.receive_data(data[start : start + 7])
        while (event := decoder.next_event()) is not None:
            events.append(event)
    assert events == [
        Welcome(
            "s",
            "alice",
            9,
            first=2,
            verified=True,
            online=(Member("alice", True, "native", 2), Member(None, False, "papaya", 1)),
        ),
        Presence("join", "bob", False, "websocket"),
        Typing("bob"),
        ChatMessage(10, STAMP, "bob", "waves", action=True, verified=True),
        ChatMessage(11, STAMP, "tom", "a\nb", dialect="papaya"),
        History(
            "h-1",
            4,
            (ChatMessage(2, STAMP, "bob", "old"), ChatMessage(3, STAMP, "bob", "older")),
            2,
        ),
    ]
    assert isinstance(events[-1], History) and events[-1].at_start
    assert decoder.pending_bytes == 0


def test_an_older_servers_welcome_still_parses() -> None:
    event = protocol.parse_event({"type": "welcome", "server": "s", "user": "a", "head": 3})
    assert event == Welcome("s", "a", 3, first=0, verified=False, online=())


def test_history_not_at_start_and_empty_history() -> None:
    page = History("h", 10, (ChatMessage(8, STAMP, "b", "x"),), 1)
    assert not page.at_start
    assert History("h", 1, (), 0).at_start


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "presence", "event": "wave", "user": "a"},
        {"type": "presence", "event": "join", "user": 7},
        {"type": "typing"},
        {"type": "history", "before": 5, "messages": "lots"},
        {"type": "history", "before": 5, "messages": [1]},
        {
            "type": "history",
            "before": 5,
            "messages": [
                {"seq": 3, "time": TIME, "user": "a", "text": "x"},
                {"seq": 2, "time": TIME, "user": "a", "text": "x"},
            ],
        },
        {
            "type": "history",
            "before": 2,
            "messages": [
                {"seq": 3, "time": TIME, "user": "a", "text": "x"},
            ],
        },
        {
            "type": "history",
            "before": 5,
            "messages": [
                {"seq": n, "time": TIME, "user": "a", "text": "x"}
                for n in range(protocol.MAX_HISTORY_LIMIT + 1)
            ],
        },
        {"type": "welcome", "server": "s", "user": "a", "head": 0, "online": {"a": 1}},
        {"type": "welcome", "server": "s", "user": "a", "head": 0, "online": [{"count": -1}]},
        {"type": "welcome", "server": "s", "user": "a", "head": 0, "first": "x"},
    ],
)
def test_malformed_new_objects_are_protocol_errors(obj: dict[str, object]) -> None:
    with pytest.raises(RemoteProtocolError):
        protocol.parse_event(obj)


@pytest.mark.parametrize(
    "answer",
    [b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n", b"HTTP/1.0 200 OK\n"],
)
def test_an_http_answer_is_recognised_on_the_first_line(answer: bytes) -> None:
    decoder = ClientDecoder()
    decoder.receive_data(answer)
    with pytest.raises(WrongService, match="speaks HTTP, not papaya-trio: use the TCP port"):
        decoder.next_event()


def test_http_is_only_looked_for_on_the_first_line() -> None:
    decoder = ClientDecoder()
    decoder.receive_data(b'{"type":"pong","id":"p"}\nHTTP/1.1 400 Bad Request\n')
    assert decoder.next_event() == Pong("p")
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_event()
    assert not isinstance(info.value, WrongService)


def test_decoder_line_bound_holds() -> None:
    decoder = ClientDecoder(max_line_bytes=64)
    decoder.receive_data(b"{" + b" " * 100)
    with pytest.raises(RemoteProtocolError, match="longer than 64 bytes"):
        decoder.next_event()


def test_client_module_is_pure() -> None:
    source = Path(protocol.__file__).read_text()
    imported = {
        node.names[0].name.split(".")[0] if isinstance(node, ast.Import) else node.module
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import | ast.ImportFrom)
    }
    assert not imported & {"trio", "socket", "os", "asyncio", "selectors"}, imported
