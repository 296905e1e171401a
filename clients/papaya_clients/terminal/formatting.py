"""How messages look: one line for plain mode, urwid markup for the full-screen view; and the
words both use for the other session events.

Times are shown in the local time zone (TZ), to the minute; plain mode also gives the date:
`2026-11-26 14:28 alice: hi`. An action (/me) reads `14:28 * alice waves`; the lines of a
multi-line message after the first are indented (plain mode: by two spaces). A name verified by
a personal token is followed by `✓`; a message from the papayaChat dialect, whose names nobody
checks, has its name prefixed with `~`. In a room with accounts (`accounts`: someone is
verified), the full-screen view follows a name that is not verified with `?`.
"""

from __future__ import annotations

import unicodedata
from datetime import date, datetime

from papaya_clients.terminal.session import Connected, Disconnected, Notice, Rejected, SessionEvent
from papaya_trio.protocol.client import ChatMessage

#: How plain mode indents the continuation lines of a multi-line message.
PLAIN_INDENT = "  "
#: After a name verified by a personal token.
VERIFIED_MARK = "✓"
#: Before a name from the papayaChat dialect (unverifiable).
PAPAYA_MARK = "~"
#: After a name not verified, in a room where names can be.
UNVERIFIED_MARK = "?"

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


def printable_lines(text: str) -> str:
    """`printable` for each line of a multi-line text; the newlines are kept."""
    return "\n".join(printable(line) for line in text.split("\n"))


def _name(message: ChatMessage, accounts: bool = False) -> str:
    if message.dialect == "papaya":
        return PAPAYA_MARK + printable(message.user)
    if message.verified:
        return printable(message.user) + VERIFIED_MARK
    return printable(message.user) + (UNVERIFIED_MARK if accounts else "")


def plain_line(message: ChatMessage) -> str:
    """One message as printed by `--plain`: `YYYY-MM-DD HH:MM user: text`, or
    `YYYY-MM-DD HH:MM * user action`; continuation lines indented by `PLAIN_INDENT`."""
    stamp = f"{local_time(message.time):%Y-%m-%d %H:%M}"
    text = printable_lines(message.text).replace("\n", "\n" + PLAIN_INDENT)
    if message.action:
        return f"{stamp} * {_name(message)} {text}"
    return f"{stamp} {_name(message)}: {text}"


def message_markup(message: ChatMessage, own_user: str, *, accounts: bool = False) -> Markup:
    """One message for the full-screen view; our own messages get the `own` attribute.

    An action (`action`, or the older form: text `* alice waves` by alice) reads
    `* alice waves`. `accounts`: mark names that are not verified.
    """
    user_attr = "own" if message.user == own_user else "user"
    time_part = ("time", f"{local_time(message.time):%H:%M} ")
    if message.action:
        return [
            time_part,
            (user_attr, f"* {_name(message, accounts)} {printable_lines(message.text)}"),
        ]
    if message.text.startswith(f"* {message.user} "):
        return [time_part, (user_attr, printable_lines(message.text))]
    return [
        time_part,
        (user_attr, _name(message, accounts)),
        ("own_text" if user_attr == "own" else "text", f": {printable_lines(message.text)}"),
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
