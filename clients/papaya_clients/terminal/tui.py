"""The full-screen client: urwid widgets on urwid's TrioEventLoop, fed by a `ChatSession`.

Layout, top to bottom: the message area (a ListBox that follows new messages until the user
scrolls up), the status line, the input line. Session events arrive on a bounded channel and
are applied by one task; urwid redraws when trio goes idle, so nothing polls.
"""

from __future__ import annotations

import random
import sys
from collections import deque
from datetime import date

import trio
import urwid

from papaya_clients.terminal.commands import HELP_LINES, Mistake, Quit, Say, ShowHelp, parse_input
from papaya_clients.terminal.config import ClientConfig
from papaya_clients.terminal.exit_status import ExitStatus, failure_exit
from papaya_clients.terminal.formatting import (
    Markup,
    day_divider,
    event_line,
    local_time,
    message_markup,
    printable,
)
from papaya_clients.terminal.protocol import ChatMessage, LocalProtocolError, message_lines
from papaya_clients.terminal.session import (
    ChatSession,
    Connected,
    Disconnected,
    Rejected,
    SessionEvent,
    SessionFailed,
)
from papaya_clients.terminal.transport import Connector

#: Lines kept in the message area; older ones are dropped.
MAX_SCROLLBACK = 5000
#: Sent lines that Up/Down can recall.
MAX_INPUT_HISTORY = 200
#: Session events waiting for the view.
EVENT_BUFFER = 256

SCROLL_KEYS = frozenset({"page up", "page down", "shift up", "shift down"})

PALETTE = [
    ("time", "dark gray", "default"),
    ("user", "light cyan", "default"),
    ("text", "default", "default"),
    ("own", "yellow,bold", "default"),
    ("own_text", "yellow", "default"),
    ("notice", "dark magenta", "default"),
    ("error", "light red", "default"),
    ("divider", "dark gray", "default"),
    ("status", "black", "light gray"),
    ("status_wait", "black", "yellow"),
]


class InputLine(urwid.Edit):
    """The one-line input with readline-style keys and a recall history of sent lines."""

    def __init__(self, view: ChatView) -> None:
        super().__init__("> ")
        self._view = view
        self._history: deque[str] = deque(maxlen=MAX_INPUT_HISTORY)
        self._recall: int | None = None

    def remember(self, line: str) -> None:
        """Add a sent line to the recall history."""
        self._history.append(line)
        self._recall = None

    def keypress(self, size: tuple[int], key: str) -> str | None:  # type: ignore[override]
        """Handle Enter, history and readline keys; the rest is urwid's normal editing."""
        text, pos = self.edit_text, self.edit_pos
        if key == "enter":
            self._view.submit(text)
        elif key == "ctrl d" and not text:
            self._view.submit("/quit")
        elif key in ("up", "down"):
            self._recall_line(-1 if key == "up" else 1)
        elif key == "ctrl a":
            self.set_edit_pos(0)
        elif key == "ctrl e":
            self.set_edit_pos(len(text))
        elif key == "ctrl u":
            self.set_edit_text(text[pos:])
            self.set_edit_pos(0)
        elif key == "ctrl k":
            self.set_edit_text(text[:pos])
        elif key == "ctrl w":
            start = len(text[:pos].rstrip())
            start = text.rfind(" ", 0, start) + 1
            self.set_edit_text(text[:start] + text[pos:])
            self.set_edit_pos(start)
        elif key == "tab":
            self.insert_text("    ")
        else:
            return super().keypress(size, key)
        return None

    def _recall_line(self, step: int) -> None:
        if not self._history:
            return
        index = len(self._history) if self._recall is None else self._recall
        index = max(0, min(len(self._history), index + step))
        self._recall = index
        self.set_edit_text(self._history[index] if index < len(self._history) else "")
        self.set_edit_pos(len(self.edit_text))


class ChatFrame(urwid.Frame[urwid.ListBox[int], None, urwid.Pile]):
    """The frame whose footer (the input) has focus; scroll keys go to the message area."""

    def __init__(self, view: ChatView, body: urwid.ListBox[int], footer: urwid.Pile) -> None:
        super().__init__(body, footer=footer, focus_part="footer")
        self._view = view
        self._footer_pile = footer

    def keypress(self, size: tuple[int, int], key: str) -> str | None:  # type: ignore[override]
        """Scroll the message area with the scroll keys; pass the rest to the input."""
        if key not in SCROLL_KEYS:
            return super().keypress(size, key)
        maxcol, maxrow = size
        body_size = (maxcol, max(1, maxrow - self._footer_pile.rows((maxcol,), focus=True)))
        self.body.keypress(body_size, key.replace("shift ", ""))
        self._view.set_following("bottom" in self.body.ends_visible(body_size))
        return None


class ChatView:
    """The widgets and what session events do to them."""

    def __init__(self, *, server_name: str, session: ChatSession) -> None:
        self._session = session
        self._server_name = server_name
        self._state: tuple[str, str] = ("status_wait", f"connecting to {server_name}")
        self._following = True
        self._last_day: date | None = None
        self._walker: urwid.SimpleFocusListWalker[urwid.Text] = urwid.SimpleFocusListWalker([])
        self._listbox: urwid.ListBox[int] = urwid.ListBox(self._walker)
        self._status = urwid.Text("", wrap="ellipsis")
        self._status_map = urwid.AttrMap(self._status, "status")
        self.input = InputLine(self)
        self.widget = ChatFrame(self, self._listbox, urwid.Pile([self._status_map, self.input]))
        self._update_status()

    def __repr__(self) -> str:
        return f"<ChatView {len(self._walker)} lines following={self._following}>"

    def submit(self, text: str) -> None:
        """Act on an Enter in the input line."""
        command = parse_input(text, self._session.user)
        if isinstance(command, Quit):
            raise urwid.ExitMainLoop
        if isinstance(command, ShowHelp):
            for line in HELP_LINES:
                self._add([("notice", line)])
        elif isinstance(command, Mistake):
            self._add([("error", command.reason)])
        elif isinstance(command, Say) and not self._queue(command.text):
            return  # keep the input so nothing typed is lost
        if text.strip():
            self.input.remember(text)
        self.input.set_edit_text("")

    def _queue(self, text: str) -> bool:
        for line in message_lines(text):
            try:
                self._session.send_nowait(line)
            except trio.WouldBlock:
                self._add([("error", "too many unconfirmed messages; press Enter again soon")])
                return False
            except LocalProtocolError:
                self._add([("error", "message too long to send")])
                return False
        self._update_status()
        return True

    def set_following(self, following: bool) -> None:
        """Follow new messages (bottom visible) or keep the scrolled position."""
        self._following = following
        self._update_status()

    def apply(self, event: SessionEvent) -> None:
        """Show one session event."""
        if isinstance(event, ChatMessage):
            day = local_time(event.time).date()
            if day != self._last_day:
                self._last_day = day
                self._add(day_divider(day))
            self._add(message_markup(event, self._session.user))
        elif (line := event_line(event, self._server_name)) is not None:
            attr = "error" if isinstance(event, Disconnected | Rejected) else "notice"
            self._add([(attr, f"-- {line}")])
        if isinstance(event, Connected):
            self._state = (
                "status",
                f"connected to {printable(event.server)} at {self._server_name}",
            )
        elif isinstance(event, Disconnected):
            self._state = ("status_wait", f"reconnecting in {event.retry_in:.0f} s")
        self._update_status()  # a confirmation only changes the unconfirmed count

    async def consume(self, events: trio.MemoryReceiveChannel[SessionEvent]) -> None:
        """Apply session events until the channel closes."""
        async with events:
            async for event in events:
                self.apply(event)

    def _add(self, markup: Markup) -> None:
        self._walker.append(urwid.Text(markup))
        excess = len(self._walker) - MAX_SCROLLBACK
        if excess > 0:
            del self._walker[:excess]
        if self._following:
            self._listbox.set_focus(len(self._walker) - 1)
            self._listbox.set_focus_valign("bottom")

    def _update_status(self) -> None:
        attr, text = self._state
        parts = [f" {self._session.user}", text]
        if self._session.pending_count:
            parts.append(f"{self._session.pending_count} unconfirmed")
        if not self._following:
            parts.append("scrolled up (PageDown)")
        self._status.set_text(" · ".join(parts))
        self._status_map.set_attr_map({None: attr})


async def run_tui(
    config: ClientConfig, *, server_name: str, connect: Connector, rng: random.Random
) -> ExitStatus:
    """Run the full-screen client until /quit and return the exit status.

    When the session cannot go on (wrong key, first connection failed) the terminal is
    restored first, then the reason is printed on stderr.
    """
    send_events, receive_events = trio.open_memory_channel[SessionEvent](EVENT_BUFFER)
    session = ChatSession(
        connect=connect, key=config.key, user=config.user, events=send_events, rng=rng
    )
    view = ChatView(server_name=server_name, session=session)
    event_loop = urwid.TrioEventLoop()
    main_loop = urwid.MainLoop(view.widget, PALETTE, event_loop=event_loop, handle_mouse=False)
    failure: SessionFailed | None = None

    async with trio.open_nursery() as nursery:

        async def run_session() -> None:
            nonlocal failure
            try:
                async with send_events:
                    await session.run()
            except SessionFailed as exc:
                failure = exc
                nursery.cancel_scope.cancel()

        nursery.start_soon(run_session)
        nursery.start_soon(view.consume, receive_events)
        with main_loop.start():
            await event_loop.run_async()
        nursery.cancel_scope.cancel()
    if failure is not None:
        status, explanation = failure_exit(failure, server_name)
        print(explanation, file=sys.stderr)
        return status
    return ExitStatus.OK
