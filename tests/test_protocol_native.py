"""The native dialect's sans-I/O decoder and encoder: no event loop involved."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from papaya_trio.protocol.decoding import NEED_DATA
from papaya_trio.protocol.events import (
    Ack,
    EndOfStream,
    Error,
    Hello,
    Message,
    Ping,
    Pong,
    SendText,
    Violation,
    Welcome,
)
from papaya_trio.protocol.native import NativeDecoder, encode_line
from papaya_trio.records import Record

KEY = "k" * 128


def decode_all(data: bytes, *, max_line: int = 1000, max_message: int = 100) -> list[object]:
    decoder = NativeDecoder(max_line, max_message)
    decoder.receive_data(data)
    decoder.receive_data(b"")
    events = []
    while (event := decoder.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def line(**obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def test_hello_send_ping() -> None:
    data = (
        line(type="hello", key=KEY, user="alice", since=3)
        + line(type="send", text="hi", id="c-1")
        + line(type="ping", id=7)
    )
    assert decode_all(data) == [
        Hello(KEY, "alice", 3),
        SendText("hi", "c-1"),
        Ping(7),
        EndOfStream(),
    ]


def test_bytes_split_anywhere_give_the_same_events() -> None:
    data = line(type="send", text="héllo wörld", id="x") * 3
    for cut in range(len(data)):
        decoder = NativeDecoder(1000, 100)
        decoder.receive_data(data[:cut])
        decoder.receive_data(data[cut:])
        events = [decoder.next_event() for _ in range(3)]
        assert events == [SendText("héllo wörld", "x")] * 3


def test_unfinished_line_at_eof_is_discarded() -> None:
    assert decode_all(line(type="send", text="ok") + b'{"type": "send", "te') == [
        SendText("ok"),
        EndOfStream(),
    ]


def test_crlf_and_blank_lines_are_tolerated() -> None:
    assert decode_all(b'\r\n\n{"type":"send","text":"a"}\r\n') == [SendText("a"), EndOfStream()]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"nope\n", "bad_json"),
        (b"[1, 2]\n", "bad_json"),
        (b"[" * 100000 + b"\n", "bad_json"),
        (b'{"type": "send", "text": "\xc3"}\n', "bad_utf8"),
        (b'{"text": "no type"}\n', "unknown_type"),
        (b'{"type": "dance"}\n', "unknown_type"),
        (b'{"type": "send"}\n', "bad_field"),
        (b'{"type": "send", "text": 5}\n', "bad_field"),
        (b'{"type": "send", "text": "a", "id": "has space"}\n', "bad_field"),
        (b'{"type": "send", "text": "a", "id": ""}\n', "bad_field"),
        (b'{"type": "send", "text": ""}\n', "bad_text"),
        (b'{"type": "send", "text": "two\\rlines"}\n', "bad_text"),
        (b'{"type": "send", "text": "\\ud800"}\n', "bad_text"),
        (b'{"type": "send", "text": "' + b"x" * 101 + b'"}\n', "message_too_long"),
        (b'{"type": "hello", "key": 1, "user": "a"}\n', "bad_field"),
        (b'{"type": "hello", "key": "k", "user": "has space"}\n', "bad_user"),
        (b'{"type": "hello", "key": "k", "user": ""}\n', "bad_user"),
        (b'{"type": "hello", "key": "k", "user": "' + b"u" * 33 + b'"}\n', "bad_user"),
        (b'{"type": "hello", "key": "k", "user": "a", "since": -1}\n', "bad_field"),
        (b'{"type": "hello", "key": "k", "user": "a", "since": true}\n', "bad_field"),
        (b'{"type": "ping", "id": [1]}\n', "bad_field"),
    ],
)
def test_violations_name_the_broken_rule(raw: bytes, code: str) -> None:
    [event, end] = decode_all(raw, max_line=200000)
    assert isinstance(event, Violation)
    assert event.code == code
    assert end == EndOfStream()


@pytest.mark.parametrize(
    "user",
    [
        "adm\u202enimda",  # RIGHT-TO-LEFT OVERRIDE: shows as "admadmin"
        "\u2067alice",  # RIGHT-TO-LEFT ISOLATE
        "\u200falice",  # RIGHT-TO-LEFT MARK
        "al\u200bice",  # ZERO WIDTH SPACE: looks like "alice"
        "alice\u200d",  # ZERO WIDTH JOINER
        "\ufeffalice",  # ZERO WIDTH NO-BREAK SPACE
        "al\u00adice",  # SOFT HYPHEN
        "ali\u2028ce",  # LINE SEPARATOR (Zl)
        "ali\u2029ce",  # PARAGRAPH SEPARATOR (Zp)
        "ali\x85ce",  # NEXT LINE (Cc)
        "\u3164",  # HANGUL FILLER: an empty-looking name
        "a\u034flice",  # COMBINING GRAPHEME JOINER
        "alice\ufe0f",  # VARIATION SELECTOR-16
        "\u0301alice",  # starts with a combining accent, which would land on what precedes
    ],
)
def test_invisible_and_bidi_characters_are_refused_in_names(user: str) -> None:
    [event, _] = decode_all(encode_hello(user))
    assert isinstance(event, Violation)
    assert (event.code, event.fatal) == ("bad_user", True)
    assert "user name must not contain" in event.message


@pytest.mark.parametrize("user", ["Zoë", "José", "مريم", "אביגיל", "小明", "a\u0301b", "🦜"])
def test_names_in_any_script_are_welcome(user: str) -> None:
    [event, _] = decode_all(encode_hello(user))
    assert isinstance(event, Hello)
    assert event.user == user


def encode_hello(user: str) -> bytes:
    return json.dumps({"type": "hello", "key": KEY, "user": user}).encode() + b"\n"


def test_overlong_line_is_fatal_and_ends_decoding() -> None:
    decoder = NativeDecoder(50, 10)
    decoder.receive_data(b"x" * 51)
    event = decoder.next_event()
    assert isinstance(event, Violation) and event.code == "line_too_long" and event.fatal
    decoder.receive_data(b'\n{"type":"ping"}\n')
    assert decoder.next_event() is NEED_DATA


def test_line_limit_counts_the_newline() -> None:
    decoder = NativeDecoder(10, 10)
    decoder.receive_data(b'{"type":1}\n')  # 11 bytes with its newline
    event = decoder.next_event()
    assert isinstance(event, Violation) and event.code == "line_too_long"


def test_encoding_of_every_server_event() -> None:
    record = Record(5, 1764167305123, "alice", 'hi "there" ünïcode', "c-1")
    assert json.loads(encode_line(Message(record))) == {
        "type": "message",
        "seq": 5,
        "time": "2025-11-26T14:28:25.123Z",
        "user": "alice",
        "text": 'hi "there" ünïcode',
    }
    assert json.loads(encode_line(Ack("c-1", 5))) == {"type": "ack", "id": "c-1", "seq": 5}
    assert json.loads(encode_line(Pong(None))) == {"type": "pong", "id": None}
    assert json.loads(encode_line(Welcome("s", "alice", 9)))["head"] == 9
    error = json.loads(encode_line(Error("bad_json", "line is not valid JSON", False, "i")))
    assert error == {
        "type": "error",
        "code": "bad_json",
        "message": "line is not valid JSON",
        "fatal": False,
        "id": "i",
    }
    assert encode_line(Message(record)).count(b"\n") == 1


@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=64))
def test_arbitrary_bytes_never_crash_the_decoder(data: bytes, chunk: int) -> None:
    decoder = NativeDecoder(512, 64)
    for start in range(0, len(data), chunk):
        decoder.receive_data(data[start : start + chunk])
        while (event := decoder.next_event()) is not NEED_DATA:
            assert isinstance(event, Hello | SendText | Ping | Violation)
            if isinstance(event, SendText):
                assert 0 < len(event.text.encode()) <= 64


@given(st.text(min_size=1, max_size=40), st.text(max_size=20) | st.none())
def test_any_valid_text_round_trips_through_json(text: str, client_id: str | None) -> None:
    [event, _] = decode_all(line(type="send", text=text, id=client_id), max_message=1000)
    if isinstance(event, SendText):
        assert event.text == text
        assert all(ord(ch) >= 0x20 and not 0x7F <= ord(ch) <= 0x9F for ch in text)
    else:
        assert isinstance(event, Violation) and event.code in {"bad_text", "bad_field"}
