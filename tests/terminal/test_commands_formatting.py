"""Slash commands and how messages are shown."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from papaya_clients.terminal.commands import Mistake, Quit, Say, ShowHelp, ShowWho, parse_input
from papaya_clients.terminal.formatting import event_line, message_markup, plain_line, printable
from papaya_clients.terminal.session import (
    Confirmed,
    Connected,
    Disconnected,
    Notice,
    Rejected,
    SessionEvent,
)
from papaya_trio.protocol.client import ChatMessage


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("hello", Say("hello")),
        ("   ", None),
        ("/quit", Quit()),
        ("/EXIT", Quit()),
        ("/help", ShowHelp()),
        ("/who", ShowWho()),
        ("/me waves  ", Say("waves", action=True)),
        ("/me", Mistake("/me needs an action, e.g. /me waves")),
        ("//etc/passwd is a path", Say("/etc/passwd is a path")),
        ("/frobnicate", Mistake("unknown command /frobnicate; /help lists the commands")),
    ],
)
def test_parse_input(line: str, command: object) -> None:
    assert parse_input(line) == command


MESSAGE = ChatMessage(7, datetime(2026, 11, 26, 14, 28, 25, tzinfo=UTC), "alice", "hi 漢字")


@pytest.mark.usefixtures("utc")
def test_plain_line_format() -> None:
    assert plain_line(MESSAGE) == "2026-11-26 14:28 alice: hi 漢字"


@pytest.mark.usefixtures("utc")
def test_own_messages_are_highlighted() -> None:
    assert message_markup(MESSAGE, "alice")[1] == ("own", "alice")
    assert message_markup(MESSAGE, "bob")[1] == ("user", "alice")


def test_printable_defuses_terminal_escapes() -> None:
    assert printable("a\x1b[2Jb\x07") == "a\ufffd[2Jb\ufffd"


def test_bidi_controls_cannot_reorder_the_line() -> None:
    message = ChatMessage(
        seq=1, time=datetime(2026, 1, 1, tzinfo=UTC), user="bob", text="abc\u202edlrow\u2066x"
    )
    line = plain_line(message)
    assert line.endswith("bob: abc\ufffddlrow\ufffdx")
    assert not set(line) & {"\u202e", "\u2066"}


@pytest.mark.usefixtures("utc")
def test_actions_are_shown_without_the_name_prefix() -> None:
    older_form = ChatMessage(8, MESSAGE.time, "alice", "* alice waves")
    assert message_markup(older_form, "bob") == [("time", "14:28 "), ("user", "* alice waves")]
    action = ChatMessage(9, MESSAGE.time, "alice", "waves", action=True)
    assert message_markup(action, "bob") == [("time", "14:28 "), ("user", "* alice waves")]
    assert plain_line(action) == "2026-11-26 14:28 * alice waves"


@pytest.mark.usefixtures("utc")
def test_multi_line_texts_keep_their_lines_and_stay_printable() -> None:
    message = ChatMessage(9, MESSAGE.time, "bob", "one\ntwo\x1b[2J")
    assert plain_line(message) == "2026-11-26 14:28 bob: one\n  two\ufffd[2J"
    assert message_markup(message, "alice")[2] == ("text", ": one\ntwo\ufffd[2J")


@pytest.mark.usefixtures("utc")
def test_verified_and_papaya_dialect_names_are_marked() -> None:
    verified = ChatMessage(9, MESSAGE.time, "bob", "hi", verified=True)
    papaya = ChatMessage(10, MESSAGE.time, "tom", "hi", dialect="papaya")
    assert plain_line(verified) == "2026-11-26 14:28 bob✓: hi"
    assert plain_line(papaya) == "2026-11-26 14:28 ~tom: hi"


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (Connected("papaya-trio\x1b[2J", 3), "connected to h:1 (papaya-trio\ufffd[2J)"),
        (Disconnected("reset", 2.0), "disconnected: reset; retrying in 2.0 s"),
        (Rejected("i-1", "bell\x07", "bad_text", "no"), "not sent (no): bell\ufffd"),
        (Notice("server: odd (x)"), "server: odd (x)"),
        (Confirmed("i-1", 4), None),
    ],
)
def test_event_lines_are_printable(event: SessionEvent, line: str | None) -> None:
    assert event_line(event, "h:1") == line
