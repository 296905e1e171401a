"""The papayaChat dialect: the original C server's protocol, byte for byte.

The client opens with exactly 128 bytes of key, then writes `user: text\\n` lines. The server
sends a history tail of raw lines, then new messages as the original daemon does: the lines
pending at a wake-up joined by newlines, with one final NUL, in one write (its client prints
what a read returns up to the first NUL, so a NUL per message would hide all but the first of
a burst). There are no replies and no errors: bad lines are dropped. `encode_client_line` and
`LINE_ENDS` are the client's side, for the bench's papayaChat-dialect load generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from papaya_trio.protocol.decoding import NEED_DATA, LineDecoder, NeedData
from papaya_trio.protocol.events import (
    ClientEvent,
    KeyPresented,
    Message,
    SendText,
    ServerEvent,
    Violation,
)
from papaya_trio.protocol.rules import KEY_CHARS, papaya_user_problem, text_problem
from papaya_trio.records import Record

HISTORY_LINES: Final = 7
HISTORY_BYTES: Final = 1050
#: What ends a line the server sends: a newline (history, and within a burst) or a NUL.
LINE_ENDS: Final = b"\n\x00"


class PapayaDecoder(LineDecoder):
    """Sans-I/O decoder for the papayaChat dialect.

    Events: first KeyPresented (once 128 bytes arrived), then SendText for each good line and a
    non-fatal Violation (code `dropped`) for each line that cannot be stored, EndOfStream when
    the peer closes (an unfinished line is discarded), and a fatal `line_too_long` Violation.
    """

    _have_key = False

    def next_event(self) -> ClientEvent | NeedData:
        """Return the next event, or NEED_DATA."""
        if self._done or self._have_key:
            return super().next_event()
        if self._lines.unfinished >= KEY_CHARS:
            self._have_key = True
            return KeyPresented(self._lines.take_rest(KEY_CHARS))
        return self._end() if self._eof else NEED_DATA

    def parse_line(self, line: bytes) -> ClientEvent:
        return parse_line(line, self._max_message_bytes)


def parse_line(line: bytes, max_message_bytes: int) -> SendText | Violation:
    """Parse one `user: text` line (without its newline).

    NUL bytes around the line are ignored: some versions of the original client send the C
    string's terminating NUL after each line, so it arrives at the start of the next one.
    """
    try:
        decoded = line.strip(b"\x00").decode().removesuffix("\r")
    except UnicodeDecodeError:
        return Violation("dropped", "line is not valid UTF-8")
    user, sep, text = decoded.partition(": ")
    if not sep:
        return Violation("dropped", "line is not of the form 'user: text'")
    if why := papaya_user_problem(user):
        return Violation("dropped", why)
    if problem := text_problem(text, max_message_bytes, allow_empty=True):
        return Violation("dropped", problem[1])
    return SendText(text, user=user)


def encode_client_line(user: str, text: str) -> bytes:
    """A client's line as the original client writes it: ``user: text`` and a newline."""
    return f"{user}: {text}\n".encode()


def encode_live(records: Sequence[Record]) -> bytes:
    """Live messages pending together: their raw lines joined by newlines, one final NUL."""
    return b"\n".join(r.raw_line.encode() for r in records) + b"\x00"


def encode_history(records: Sequence[Record]) -> bytes:
    """The history tail as raw newline-terminated lines."""
    return b"".join(r.raw_line.encode() + b"\n" for r in records)


def encode_writes(events: Sequence[ServerEvent]) -> list[bytes]:
    """The writes that carry `events`: replayed history as raw lines in one write, then the
    live messages in one write (see `encode_live`); the dialect has no form for anything else."""
    messages = [event for event in events if isinstance(event, Message)]
    writes = []
    if history := [m.record for m in messages if m.replay]:
        writes.append(encode_history(history))
    if live := [m.record for m in messages if not m.replay]:
        writes.append(encode_live(live))
    return writes


def history_tail(records: Sequence[Record]) -> Sequence[Record]:
    """The original's tail: the newest messages within 7 lines and the last 1050 bytes (a
    multi-line message counts each of its lines)."""
    size = 0
    lines = 0
    keep = 0
    for record in reversed(records[-HISTORY_LINES:]):
        raw = record.raw_line
        size += len(raw.encode()) + 1
        lines += raw.count("\n") + 1
        if size > HISTORY_BYTES or lines > HISTORY_LINES:
            break
        keep += 1
    return records[len(records) - keep :]
