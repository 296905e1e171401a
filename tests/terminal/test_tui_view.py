"""The full-screen view's widgets, rendered without a terminal."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import pytest
import trio
import urwid

from papaya_clients.terminal.session import (
    ChatSession,
    Connected,
    Disconnected,
    Rejected,
    SessionEvent,
)
from papaya_clients.terminal.transport import open_tcp_connection
from papaya_clients.terminal.tui import MAX_SCROLLBACK, TYPING_SHOWN, ChatView
from papaya_trio.protocol.client import ChatMessage, History, Member, Presence, Typing

SIZE = (60, 10)

#: Every test here reads times on the screen.
pytestmark = pytest.mark.usefixtures("utc")


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
    assert list(view._session._pending.values()) == [("waves", True)]
    assert any("* alice waves (pending)" in row for row in screen(view))


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


async def test_status_line_counts_down_to_each_reconnect_attempt(
    view: ChatView, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    nursery.start_soon(view.count_down)
    assert "connecting to here:1" in screen(view)[-2]
    view.apply(Connected("papaya-trio 0.1.0", 0))
    assert "alice · connected · papaya-trio 0.1.0 at here:1" in screen(view)[-2]
    for attempt, delay in enumerate((2.0, 3.0, 3.0), start=1):
        view.apply(Disconnected("connection refused", delay, attempt))
        await trio.sleep(0.5)  # between two ticks of the countdown
        for left in range(int(delay), 0, -1):
            assert (
                f"reconnecting in {left} s · attempt {attempt}: connection refused"
                in (screen(view)[-2])
            )
            await trio.sleep(1)
        assert "reconnecting now" in screen(view)[-2]
    rows = screen(view)
    assert sum("disconnected" in row for row in rows) == 1, rows  # one line for the outage
    view.apply(Connected("papaya-trio 0.1.0", 0))
    assert "alice · connected ·" in screen(view)[-2]
    view.apply(Disconnected("reset", 1.0, 1))
    assert sum("disconnected" in row for row in screen(view)) == 2  # a new outage, a new line


def render(view: ChatView, size: tuple[int, int]) -> list[str]:
    return [line.decode() for line in view.widget.render(size, focus=True).text]


@pytest.mark.parametrize("size", [(20, 6), (21, 7), (33, 6), (80, 24)])
def test_newest_wrapped_message_ends_on_screen_with_a_hanging_indent(
    view: ChatView, size: tuple[int, int]
) -> None:
    view.apply(message(1, "bob", "short"))
    words = " ".join(f"word{n}" for n in range(40))
    view.apply(message(2, "bob", f"{words} THE-END"))
    rows = render(view, size)
    body = [row for row in rows[:-2] if row.strip()]
    assert "THE-END" in body[-1], rows  # the message's last row is shown, and is the last
    continuation = [row for row in body if "word" in row and not row.startswith("14:28")]
    assert continuation, rows
    assert all(row.startswith("  ") and row[2] != " " for row in continuation), rows


def test_multi_line_text_is_indented_under_its_first_line(view: ChatView) -> None:
    view.apply(message(1, "bob", "first\nsecond\nthird"))
    rows = render(view, (20, 6))
    start = next(n for n, row in enumerate(rows) if "first" in row)
    assert rows[start : start + 3] == [
        "14:28 bob: first".ljust(20),
        "  second".ljust(20),
        "  third".ljust(20),
    ]


def test_message_typed_offline_is_pending_then_confirmed_in_place(view: ChatView) -> None:
    view.apply(message(1, "bob", "before"))
    view.submit("typed offline")
    view.apply(message(2, "bob", "meanwhile"))
    rows = screen(view)
    mine = next(n for n, row in enumerate(rows) if "typed offline" in row)
    assert "(pending)" in rows[mine]
    assert "meanwhile" in rows[mine + 1]
    canvas = view.widget.render(SIZE, focus=True)
    attrs = [attr for attr, _cs, text in list(canvas.content())[mine] if text.strip()]
    assert set(attrs) == {"pending"}  # dimmed as a whole
    view.apply(message(3, "alice", "typed offline"))  # the server's copy, before the ack
    rows = screen(view)
    assert sum("typed offline" in row for row in rows) == 1, rows
    assert "alice: typed offline" in rows[mine] and "pending" not in rows[mine]
    assert "meanwhile" in rows[mine + 1]


def test_refused_pending_message_says_so_in_place(view: ChatView) -> None:
    view.submit("bell")
    [message_id] = view._session._pending
    view.apply(Rejected(message_id, "bell", "bad_text", "control characters"))
    rows = screen(view)
    assert any("not sent (control characters): bell" in row for row in rows), rows
    assert not any("pending" in row for row in rows)


def test_who_and_the_online_count_follow_presence(view: ChatView) -> None:
    online = (Member("alice"), Member("bob", verified=True), Member(None, dialect="papaya"))
    view.apply(Connected("papaya-trio 0.1.0", 0, 0, online))
    assert "3 online" in screen(view)[-2]
    view.apply(Presence("join", "carol", False, "websocket"))
    view.apply(Presence("join", None, False, "papaya"))
    view.apply(Presence("leave", "bob", True, "native"))
    assert "4 online" in screen(view)[-2]
    view.submit("/who")
    assert any("online (4): alice, carol, ~papayaChat x2" in row for row in screen(view))
    assert view._session.pending_count == 0  # /who is not sent


async def test_page_up_at_the_top_loads_older_messages_and_marks_the_start(
    view: ChatView,
) -> None:
    view.apply(Connected("papaya-trio 0.1.0", 60, 1, ()))
    for seq in range(51, 61):
        view.apply(message(seq, "bob", f"live {seq}"))
    view._session.connected = True  # as after a welcome: requests may go out
    keys(view, "page up", "page up")
    assert view._session._requests[-1] == {
        "type": "history",
        "before": 51,
        "limit": 50,
        "id": "h-1",
    }
    assert "loading older messages" in screen(view)[-2]
    focused = view._listbox.focus
    older = tuple(message(seq, "bob", f"old {seq}") for seq in range(1, 51))
    view.apply(History("h-1", 51, older, 1))
    assert view._listbox.focus is focused  # the reader keeps their place
    texts = [row.text for row in view._walker]
    assert texts[0] == "── start of history ──"
    assert [t for t in texts if "bob:" in t][:2] == ["14:28 bob: old 1", "14:28 bob: old 2"]
    assert sum("──" in t and "2026" in t for t in texts) == 1  # one day divider, not two
    keys(view, *["page up"] * 30)
    assert len(view._session._requests) == 1  # at the start: nothing more to ask for


async def test_typing_hints_are_shown_until_they_expire_or_the_message_comes(
    view: ChatView, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    nursery.start_soon(view.count_down)
    view.apply(Typing("bob"))
    view.apply(Typing("carol"))
    view.apply(Typing("alice"))  # our own, from another connection: not shown
    await trio.sleep(1)
    assert "bob, carol are typing" in screen(view)[-2]
    view.apply(message(1, "bob", "done"))
    assert "carol is typing" in screen(view)[-2]
    await trio.sleep(TYPING_SHOWN)
    assert "typing" not in screen(view)[-2]


def test_typing_sends_one_hint_per_interval(view: ChatView) -> None:
    view._session.connected = True  # as after a welcome: requests may go out
    keys(view, *"hello there")
    assert list(view._session._requests) == [{"type": "typing"}]
    view._session._requests.clear()
    view._typing_sent_at = -math.inf  # as if the interval had passed
    keys(view, "ctrl u", *"/who")
    assert not view._session._requests  # a command is not typing
    keys(view, "ctrl u", "x")
    assert list(view._session._requests) == [{"type": "typing"}]


def test_unverified_names_are_marked_once_the_room_has_accounts(view: ChatView) -> None:
    view.apply(Connected("papaya-trio 0.1.0", 0))
    view.apply(message(1, "bob", "before accounts"))
    assert any("14:28 bob: before accounts" in row for row in screen(view))
    view.apply(Presence("join", "carol", True, "native"))
    view.apply(message(2, "bob", "unverified"))
    stamp = message(0, "", "").time
    view.apply(ChatMessage(3, stamp, "carol", "verified", verified=True))
    view.apply(ChatMessage(4, stamp, "tom", "papaya", dialect="papaya"))
    rows = screen(view)
    assert any("14:28 bob?: unverified" in row for row in rows), rows
    assert any("14:28 carol✓: verified" in row for row in rows), rows
    assert any("14:28 ~tom: papaya" in row for row in rows), rows
