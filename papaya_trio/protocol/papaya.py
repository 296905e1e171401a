"""The papayaChat dialect: the original C server's protocol, byte for byte.

The client opens with exactly 128 bytes of key, then writes `user: text\\n` lines. The server
sends a history tail of raw lines, then each new message with its newline replaced by a NUL,
one message per write. There are no replies and no errors: bad lines are dropped.
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
from papaya_trio.protocol.rules import KEY_CHARS, text_problem, user_problem
from papaya_trio.records import Record

HISTORY_LINES: Final = 7
HISTORY_BYTES: Final = 1050


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
    if why := user_problem(user):
        return Violation("dropped", why)
    if problem := text_problem(text, max_message_bytes):
        return Violation("dropped", problem[1])
    return SendText(text, user=user)


def encode_live(record: Record) -> bytes:
    """A live message: the raw line with its final newline replaced by NUL."""
    return record.raw_line.encode() + b"\x00"


def encode_history(records: Sequence[Record]) -> bytes:
    """The history tail as raw newline-terminated lines."""
    return b"".join(r.raw_line.encode() + b"\n" for r in records)


def encode_writes(events: Sequence[ServerEvent]) -> list[bytes]:
    """The writes that carry `events`: replayed history as raw lines in one write, then each
    live message in its own write; welcome, acks, pongs and errors have no form here."""
    messages = [event for event in events if isinstance(event, Message)]
    history = encode_history([m.record for m in messages if m.replay])
    live = [encode_live(m.record) for m in messages if not m.replay]
    return [history, *live] if history else live


def history_tail(records: Sequence[Record]) -> Sequence[Record]:
    """The original's tail: at most the last 7 lines that fit in the last 1050 bytes."""
    size = 0
    keep = 0
    for record in reversed(records[-HISTORY_LINES:]):
        size += len(record.raw_line.encode()) + 1
        if size > HISTORY_BYTES:
            break
        keep += 1
    return records[len(records) - keep :]
