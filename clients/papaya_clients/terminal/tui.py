"""The full-screen client: urwid widgets on urwid's TrioEventLoop, fed by a `ChatSession`.

Layout, top to bottom: the message area (a ListBox that follows new messages until the user
scrolls up), the status line, the input line. Session events arrive on a bounded channel and
are applied by one task; urwid redraws when trio goes idle, so nothing polls.

- Messages wrap with a hanging indent (`wrapping`). While following, the newest message is
  aligned to the bottom by its last row, so it is never cut off, even when it is taller than
  the message area.
- A message typed while offline (or not yet acknowledged) is shown at once, dimmed and marked
  "pending"; when the server's copy arrives it replaces the pending row in place.
- A lost connection adds one chat line; the reconnection attempts only change the status line,
  which counts down to the next attempt (`count_down`, woken by the session's events, asleep
  while connected).
- PageUp at the top of the scrollback asks the server for the page of older messages and
  inserts it above, keeping the focused row where it was; the start of the room's history is
  marked.
- Who is online comes with the welcome and is kept up to date by presence events: a count in
  the status line, the names with /who.
- Typing a message (not a command) sends a typing hint at most once per `TYPING_INTERVAL`;
  others' hints show in the status line for `TYPING_SHOWN` seconds or until their message.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import UTC, date, datetime

import trio
import urwid

from papaya_clients.terminal.commands import (
    HELP_LINES,
    Mistake,
    Quit,
    Say,
    ShowHelp,
    ShowWho,
    parse_input,
)
from papaya_clients.terminal.config import ClientConfig
from papaya_clients.terminal.exit_status import ExitStatus, failure_exit
from papaya_clients.terminal.formatting import (
    PAPAYA_MARK,
    VERIFIED_MARK,
    Markup,
    day_divider,
    event_line,
    local_time,
    message_markup,
    printable,
)
from papaya_clients.terminal.session import (
    ChatSession,
    Confirmed,
    Connected,
    Disconnected,
    Rejected,
    SessionEvent,
    SessionFailed,
    open_session,
)
from papaya_clients.terminal.transport import Connector
from papaya_clients.terminal.wrapping import HANGING
from papaya_trio.protocol.client import (
    TYPING_INTERVAL,
    ChatMessage,
    History,
    LocalProtocolError,
    Member,
    Presence,
    Typing,
    message_lines,
)

#: Lines kept in the message area; older ones are dropped.
MAX_SCROLLBACK = 5000
#: Sent lines that Up/Down can recall.
MAX_INPUT_HISTORY = 200

SCROLL_KEYS = frozenset({"page up", "page down", "shift up", "shift down"})
#: Seconds a typing hint stays in the status line unless renewed (the server relays at most one
#: per user per 2 s, clients send one per 3 s while typing).
TYPING_SHOWN = 6.0
#: Older messages asked for per PageUp at the top.
HISTORY_PAGE = 50

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
    ("pending", "dark gray", "default"),
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
            unhandled = super().keypress(size, key)
            if len(key) == 1 and not self.edit_text.startswith("/"):  # a message, not a command
                self._view.typed()
            return unhandled
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
        """Scroll the message area with the scroll keys; pass the rest to the input.

        PageUp with the top of the scrollback already in view loads older messages."""
        if key not in SCROLL_KEYS:
            return super().keypress(size, key)
        maxcol, maxrow = size
        body_size = (maxcol, max(1, maxrow - self._footer_pile.rows((maxcol,), focus=True)))
        at_top = "top" in self.body.ends_visible(body_size)
        self.body.keypress(body_size, key.replace("shift ", ""))
        self._view.set_following("bottom" in self.body.ends_visible(body_size))
        if key == "page up" and at_top:
            self._view.load_older()
        return None


class MessageList(urwid.ListBox[int]):
    """The message area. While `following`, the newest row is drawn from its last line up, so
    a message taller than the area shows its end (urwid would show its beginning)."""

    def __init__(self, rows: urwid.SimpleFocusListWalker[Row]) -> None:
        super().__init__(rows)
        self._rows = rows
        self.following = True

    def render(self, size: tuple[int, int], focus: bool = False) -> urwid.Canvas:  # type: ignore[override]
        """Draw the rows; when following, the last one bottom-aligned whatever its height."""
        maxcol, maxrow = size
        walker = self._rows
        if self.following and len(walker) and maxrow:
            last = len(walker) - 1
            walker.set_focus(last)  # the walker's, not the list box's, which would defer it
            height = walker[last].rows((maxcol,))
            self.shift_focus(size, maxrow - height)  # negative: its top rows are hidden
        return super().render(size, focus)


class Row(urwid.Text):
    """One row of the message area, wrapped with a hanging indent; `seq` for a message."""

    def __init__(self, markup: Markup, seq: int | None = None, day: date | None = None) -> None:
        super().__init__(markup, layout=HANGING)
        self.seq = seq
        #: Set on a day divider: the day it introduces.
        self.day = day


@dataclass(slots=True)
class _Pending:
    """A message shown before the server has it: its row, and what it says."""

    row: Row
    text: str
    action: bool


class ChatView:
    """The widgets and what session events do to them."""

    def __init__(self, *, server_name: str, session: ChatSession) -> None:
        self._session = session
        self._server_name = server_name
        #: The status line's colour, the connection state, and its details (shown last: the
        #: line is cut at the terminal's width).
        self._state: tuple[str, str, str] = ("status_wait", f"connecting to {server_name}", "")
        self._following = True
        self._last_day: date | None = None
        self._walker: urwid.SimpleFocusListWalker[Row] = urwid.SimpleFocusListWalker([])
        self._listbox = MessageList(self._walker)
        self._status = urwid.Text("", wrap="ellipsis")
        self._status_map = urwid.AttrMap(self._status, "status")
        self.input = InputLine(self)
        self.widget = ChatFrame(self, self._listbox, urwid.Pile([self._status_map, self.input]))
        #: Messages shown as pending, by id, oldest first.
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        #: Who is online: name (None: papayaChat connections) -> member.
        self._online: dict[str | None, Member] = {}
        #: Whether the room has accounts (someone was seen verified): then names that are not
        #: verified are marked.
        self._accounts = False
        #: The oldest stored sequence number (None: the server did not say).
        self._first: int | None = None
        self._history_id: str | None = None
        self._history_requests = 0
        self._at_start = False
        #: When the next connection attempt starts (trio time), while reconnecting.
        self._retry_at: float | None = None
        self._retry_note = ""
        self._wake = trio.Event()
        #: Who is typing: name -> trio time when the hint expires.
        self._typing: dict[str, float] = {}
        self._typing_sent_at = -math.inf
        self._update_status()

    def __repr__(self) -> str:
        return f"<ChatView {len(self._walker)} rows following={self._following}>"

    def submit(self, text: str) -> None:
        """Act on an Enter in the input line."""
        command = parse_input(text)
        if isinstance(command, Quit):
            raise urwid.ExitMainLoop
        if isinstance(command, ShowHelp):
            for line in HELP_LINES:
                self._add([("notice", line)])
        elif isinstance(command, ShowWho):
            self._add([("notice", self._who())])
        elif isinstance(command, Mistake):
            self._add([("error", command.reason)])
        elif isinstance(command, Say) and not self._queue(command):
            return  # keep the input so nothing typed is lost
        if text.strip():
            self.input.remember(text)
        self.input.set_edit_text("")

    def _queue(self, say: Say) -> bool:
        for line in message_lines(say.text):
            try:
                message_id = self._session.send_nowait(line, action=say.action)
            except trio.WouldBlock:
                self._add([("error", "too many unconfirmed messages; press Enter again soon")])
                return False
            except LocalProtocolError:
                self._add([("error", "message too long to send")])
                return False
            row = self._add(self._pending_markup(line, say.action))
            self._pending[message_id] = _Pending(row, line, say.action)
        self._update_status()
        return True

    def _pending_markup(self, text: str, action: bool) -> Markup:
        draft = ChatMessage(0, datetime.now(UTC), self._session.user, text, action=action)
        markup = self._markup(draft)
        return [(("pending", part[1]) if isinstance(part, tuple) else part) for part in markup] + [
            ("pending", " (pending)")
        ]

    def typed(self) -> None:
        """The user typed a character of a message: send a typing hint, one per interval."""
        now = time.monotonic()
        if now - self._typing_sent_at >= TYPING_INTERVAL and self._session.send_typing():
            self._typing_sent_at = now

    def set_following(self, following: bool) -> None:
        """Follow new messages (bottom visible) or keep the scrolled position."""
        self._following = following
        self._listbox.following = following
        self._update_status()

    def apply(self, event: SessionEvent) -> None:
        """Show one session event."""
        if isinstance(event, ChatMessage):
            self._show_message(event)
        elif isinstance(event, Confirmed | Rejected):
            self._settle(event)
        elif isinstance(event, Presence):
            self._presence(event)
        elif isinstance(event, Typing):
            if event.user != self._session.user:
                self._typing[event.user] = trio.current_time() + TYPING_SHOWN
                self._wake_count_down()
        elif isinstance(event, History):
            self._show_history(event)
        elif isinstance(event, Disconnected):
            if event.attempt == 1:  # one line per outage; the attempts are in the status line
                self._add([("error", f"-- disconnected: {printable(event.reason)}")])
            self._retry_at = trio.current_time() + event.retry_in
            self._retry_note = f"attempt {event.attempt}: {printable(event.reason)}"
            self._wake_count_down()
        elif (line := event_line(event, self._server_name)) is not None:
            self._add([("notice", f"-- {line}")])
        if isinstance(event, Connected):
            self._state = (
                "status",
                "connected",
                f"{printable(event.server)} at {self._server_name}",
            )
            self._online = {member.user: member for member in event.online}
            self._accounts = event.verified or any(m.verified for m in event.online)
            self._first = event.first if event.first or event.head == 0 else None
            self._history_id = None
            self._retry_at = None
            self._wake_count_down()
        self._update_status()

    def _show_message(self, message: ChatMessage) -> None:
        self._typing.pop(message.user, None)
        if message.user == self._session.user:
            for message_id, pending in self._pending.items():
                if (pending.text, pending.action) == (message.text, message.action):
                    del self._pending[message_id]
                    pending.row.set_text(self._markup(message))
                    pending.row.seq = message.seq
                    return
        day = local_time(message.time).date()
        if day != self._last_day:
            self._last_day = day
            self._add(day_divider(day), day=day)
        self._add(self._markup(message), seq=message.seq)

    def _markup(self, message: ChatMessage) -> Markup:
        self._accounts = self._accounts or message.verified
        return message_markup(message, self._session.user, accounts=self._accounts)

    def _settle(self, event: Confirmed | Rejected) -> None:
        """A pending message whose copy did not arrive was confirmed, or was refused."""
        pending = self._pending.pop(event.id, None)
        if pending is None:
            return
        if isinstance(event, Confirmed):
            draft = ChatMessage(
                event.seq, datetime.now(UTC), self._session.user, pending.text, pending.action
            )
            pending.row.set_text(self._markup(draft))
            pending.row.seq = event.seq
        else:
            line = event_line(event, self._server_name)
            pending.row.set_text([("error", f"-- {line}")])

    def _presence(self, event: Presence) -> None:
        self._accounts = self._accounts or event.verified
        known = self._online.get(event.user)
        count = (known.count if known else 0) + (1 if event.event == "join" else -1)
        if count <= 0:
            self._online.pop(event.user, None)
        else:
            self._online[event.user] = Member(event.user, event.verified, event.dialect, count)

    def _online_count(self) -> int:
        return sum(m.count if m.user is None else 1 for m in self._online.values())

    def _who(self) -> str:
        names = []
        for member in sorted(self._online.values(), key=lambda m: (m.user is None, m.user or "")):
            if member.user is None:
                names.append(f"{PAPAYA_MARK}papayaChat x{member.count}")
                continue
            name = printable(member.user) + (VERIFIED_MARK if member.verified else "")
            names.append(name + (f" x{member.count}" if member.count > 1 else ""))
        return f"online ({self._online_count()}): {', '.join(names) or 'nobody'}"

    def load_older(self) -> None:
        """Ask for the page of messages before the oldest one shown (PageUp at the top)."""
        if self._at_start or self._history_id is not None:
            return
        oldest = self._oldest_seq()
        before = oldest if oldest is not None else (self._session.last_seq or 0) + 1
        if self._first is not None and before <= max(self._first, 1):
            self._mark_start()
            return
        if len(self._walker) + HISTORY_PAGE > MAX_SCROLLBACK:
            self._insert_top([Row([("notice", "-- scrollback full; older messages not loaded")])])
            self._at_start = True
            return
        self._history_requests += 1
        request_id = f"h-{self._history_requests}"
        if self._session.request_history(before, HISTORY_PAGE, request_id):
            self._history_id = request_id
            self._update_status()

    def _oldest_seq(self) -> int | None:
        return next((row.seq for row in self._walker if row.seq is not None), None)

    def _show_history(self, page: History) -> None:
        if page.id != self._history_id:
            return
        self._history_id = None
        oldest = self._oldest_seq()
        rows: list[Row] = []
        last_day: date | None = None
        for message in page.messages:
            if oldest is not None and message.seq >= oldest:
                continue
            day = local_time(message.time).date()
            if day != last_day:
                last_day = day
                rows.append(Row(day_divider(day), day=day))
            rows.append(Row(self._markup(message), seq=message.seq))
        dated = next(
            (n for n, row in enumerate(self._walker) if row.day or row.seq is not None), None
        )
        if last_day is not None and dated is not None and self._walker[dated].day == last_day:
            del self._walker[dated]  # the day goes on from the inserted page: one divider
        self._insert_top(rows)
        if page.at_start:
            self._mark_start()
        self._update_status()

    def _mark_start(self) -> None:
        self._at_start = True
        self._insert_top([Row([("divider", "── start of history ──")])])

    def _insert_top(self, rows: list[Row]) -> None:
        """Insert rows above the scrollback; the focused row stays where it is on screen."""
        if not rows:
            return
        self._walker[0:0] = rows  # the walker moves its focus index along

    async def consume(self, events: trio.MemoryReceiveChannel[SessionEvent]) -> None:
        """Apply session events until the channel closes."""
        async with events:
            async for event in events:
                self.apply(event)

    async def count_down(self) -> None:
        """Keep the status line's clocks current: the reconnect countdown, once per second
        while reconnecting, and the typing hints, until they expire; asleep otherwise (woken
        by the events that change them)."""
        while True:
            now = trio.current_time()
            self._typing = {user: end for user, end in self._typing.items() if end > now}
            self._update_status()
            wake = self._wake
            deadlines = list(self._typing.values())
            if self._retry_at is not None and self._retry_at > now:
                remaining = self._retry_at - now
                # When the shown whole number of seconds changes.
                deadlines.append(now + remaining - math.ceil(remaining) + 1)
            with trio.move_on_at(min(deadlines, default=math.inf)):
                await wake.wait()

    def _wake_count_down(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    def _add(self, markup: Markup, *, seq: int | None = None, day: date | None = None) -> Row:
        row = Row(markup, seq, day)
        self._walker.append(row)
        excess = len(self._walker) - MAX_SCROLLBACK
        if excess > 0:
            del self._walker[:excess]
            self._at_start = False
        return row

    def _update_status(self) -> None:
        attr, text, detail = self._state
        if self._retry_at is not None:
            remaining = math.ceil(self._retry_at - trio.current_time())
            when = f"in {remaining} s" if remaining > 0 else "now"
            attr, text, detail = "status_wait", f"reconnecting {when}", self._retry_note
        parts = [f" {self._session.user}", text]
        if self._online:
            parts.append(f"{self._online_count()} online")
        if self._session.pending_count:
            parts.append(f"{self._session.pending_count} unconfirmed")
        if self._typing:
            names = ", ".join(printable(user) for user in sorted(self._typing))
            parts.append(f"{names} {'is' if len(self._typing) == 1 else 'are'} typing")
        if self._history_id is not None:
            parts.append("loading older messages")
        if not self._following:
            parts.append("scrolled up (PageDown)")
        if detail:
            parts.append(detail)
        self._status.set_text(" · ".join(parts))
        self._status_map.set_attr_map({None: attr})


async def run_tui(
    config: ClientConfig, *, server_name: str, connect: Connector, rng: random.Random
) -> ExitStatus:
    """Run the full-screen client until /quit and return the exit status.

    When the session cannot go on (wrong key, first connection failed) the terminal is
    restored first, then the reason is printed on stderr.
    """
    session, send_events, receive_events = open_session(config, connect, rng)
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
        nursery.start_soon(view.count_down)
        with main_loop.start():
            await event_loop.run_async()
        nursery.cancel_scope.cancel()
    if failure is not None:
        status, explanation = failure_exit(failure, server_name)
        print(explanation, file=sys.stderr)
        return status
    return ExitStatus.OK
