"""The full-screen view's widgets, rendered without a terminal."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
import trio
import urwid

from papaya_clients.terminal.protocol import ChatMessage
from papaya_clients.terminal.session import ChatSession, Connected, Disconnected, SessionEvent
from papaya_clients.terminal.transport import open_tcp_connection
from papaya_clients.terminal.tui import MAX_SCROLLBACK, ChatView

SIZE = (60, 10)


@pytest.fixture
def view() -> ChatView:
    send, _receive = trio.open_memory_channel[SessionEvent](0)
    session = ChatSession(
        connect=lambda: open_tcp_connection("127.0.0.1", 1),
        key="k",
        user="alice",
        events=send,
        rng=random.Random(1),
    )
    return ChatView(server_name="here:1", session=session)


def message(seq: int, user: str, text: str) -> ChatMessage:
    return ChatMessage(seq, datetime(2026, 11, 26, 14, 28, tzinfo=UTC), user, text)


def screen(view: ChatView) -> list[str]:
    canvas = view.widget.render(SIZE, focus=True)
    return [line.decode() for line in canvas.text]


def keys(view: ChatView, *pressed: str) -> None:
    for key in pressed:
        view.widget.keypress(SIZE, key)


def test_long_and_wide_lines_wrap(view: ChatView) -> None:
    view.apply(message(1, "bob", "漢字" * 20))
    rows = screen(view)
    assert rows[1].count("漢字") + rows[2].count("漢字") == 20
    assert all(urwid.calc_width(row, 0, len(row)) <= SIZE[0] for row in rows)


def test_own_messages_use_the_own_attribute(view: ChatView) -> None:
    view.apply(message(1, "alice", "mine"))
    view.apply(message(2, "bob", "theirs"))
    canvas = view.widget.render(SIZE, focus=True)
    attrs = [[attr for attr, _cs, text in row if text.strip()] for row in canvas.content()]
    assert "own" in attrs[1]
    assert "user" in attrs[2]


def test_follows_new_messages_until_scrolled_up(view: ChatView) -> None:
    for n in range(30):
        view.apply(message(n + 1, "bob", f"line {n}"))
    assert "line 29" in screen(view)[-3]
    keys(view, "page up")
    assert "scrolled up" in screen(view)[-2]
    view.apply(message(31, "bob", "line 30"))
    assert not any("line 30" in row for row in screen(view))
    keys(view, "page down", "page down", "page down")
    assert "scrolled up" not in screen(view)[-2]
    view.apply(message(32, "bob", "line 31"))
    assert "line 31" in screen(view)[-3]


def test_scrollback_is_bounded(view: ChatView) -> None:
    for n in range(MAX_SCROLLBACK + 10):
        view.apply(message(n + 1, "bob", f"line {n}"))
    assert len(view._walker) == MAX_SCROLLBACK


def test_typing_sends_one_message_per_pasted_line(view: ChatView) -> None:
    keys(view, *"one", "enter")
    view.submit("two\nthree")
    assert view._session.pending_count == 3
    assert "3 unconfirmed" in screen(view)[-2]
    assert screen(view)[-1].strip() == ">"


def test_me_command_and_history_recall(view: ChatView) -> None:
    keys(view, *"/me waves", "enter", "up")
    assert view.input.edit_text == "/me waves"
    assert list(view._session._pending.values()) == ["* alice waves"]


def test_unknown_command_is_explained_and_not_sent(view: ChatView) -> None:
    keys(view, *"/nope", "enter")
    assert any("unknown command /nope" in row for row in screen(view))
    assert view._session.pending_count == 0


def test_readline_keys(view: ChatView) -> None:
    keys(view, *"hello big world", "ctrl w")
    assert view.input.edit_text == "hello big "
    keys(view, "ctrl a", "ctrl k")
    assert view.input.edit_text == ""


def test_quit_and_ctrl_d(view: ChatView) -> None:
    with pytest.raises(urwid.ExitMainLoop):
        keys(view, *"/quit", "enter")
    view.input.set_edit_text("")
    with pytest.raises(urwid.ExitMainLoop):
        keys(view, "ctrl d")


def test_status_line_shows_the_connection_state(view: ChatView) -> None:
    assert "connecting to here:1" in screen(view)[-2]
    view.apply(Connected("papaya-trio 0.1.0", 0))
    assert "connected to papaya-trio 0.1.0" in screen(view)[-2]
    view.apply(Disconnected("server closed the connection", 2.0))
    assert "reconnecting in 2 s" in screen(view)[-2]
