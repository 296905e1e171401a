"""How messages look: one line for plain mode, urwid markup for the full-screen view; and the
words both use for the other session events.

Times are shown in the local time zone (TZ), to the minute; plain mode also gives the date:
`2026-11-26 14:28 alice: hi`.
"""

from __future__ import annotations

import unicodedata
from datetime import date, datetime

from papaya_clients.terminal.protocol import ChatMessage
from papaya_clients.terminal.session import Connected, Disconnected, Notice, Rejected, SessionEvent

#: urwid text markup: a string, or a list of (attribute, string) pairs and strings.
Markup = list[tuple[str, str] | str]


def local_time(stamp: datetime) -> datetime:
    """The server's UTC timestamp in the local time zone."""
    return stamp.astimezone()


#: Explicit bidi formatting characters: embeddings, overrides, isolates and marks. In a
#: terminal that applies the bidi algorithm, one of them in a message could reorder what is
#: shown after it (the next message, the user name); replaced, each shows as U+FFFD.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def printable(text: str) -> str:
    """`text` with control characters and bidi controls replaced, so a server cannot send
    terminal escapes and a message cannot reorder what surrounds it."""
    return "".join(
        "\ufffd" if ch in BIDI_CONTROLS or unicodedata.category(ch) == "Cc" else ch for ch in text
    )


def plain_line(message: ChatMessage) -> str:
    """One message as printed by `--plain`: `YYYY-MM-DD HH:MM user: text`."""
    stamp = f"{local_time(message.time):%Y-%m-%d %H:%M}"
    return f"{stamp} {printable(message.user)}: {printable(message.text)}"


def message_markup(message: ChatMessage, own_user: str) -> Markup:
    """One message for the full-screen view; our own messages get the `own` attribute.

    An action sent with /me (`* alice waves`, by alice) is shown without the `alice:` prefix.
    """
    user_attr = "own" if message.user == own_user else "user"
    if message.text.startswith(f"* {message.user} "):
        return [
            ("time", f"{local_time(message.time):%H:%M} "),
            (user_attr, printable(message.text)),
        ]
    return [
        ("time", f"{local_time(message.time):%H:%M} "),
        (user_attr, printable(message.user)),
        ("own_text" if user_attr == "own" else "text", f": {printable(message.text)}"),
    ]


def event_line(event: SessionEvent, server_name: str) -> str | None:
    """A session event in words, as both clients tell it; None for the events they do not
    tell (messages have their own forms, a confirmation only changes a count)."""
    if isinstance(event, Connected):
        return f"connected to {server_name} ({printable(event.server)})"
    if isinstance(event, Disconnected):
        return f"disconnected: {printable(event.reason)}; retrying in {event.retry_in:.1f} s"
    if isinstance(event, Rejected):
        return f"not sent ({printable(event.reason)}): {printable(event.text)}"
    if isinstance(event, Notice):
        return printable(event.text)
    return None


def day_divider(day: date) -> Markup:
    """The line shown before the first message of a new day."""
    return [("divider", f"── {day:%A %Y-%m-%d} ──")]
