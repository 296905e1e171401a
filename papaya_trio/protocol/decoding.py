"""What both dialects' decoders share: bounded line splitting and the end of the stream."""

from __future__ import annotations

from typing import Final

from papaya_trio.protocol.events import ClientEvent, EndOfStream, Violation
from papaya_trio.protocol.lines import LineBuffer, LineTooLong


class NeedData:
    """Returned by next_event when more bytes are needed."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


class LineDecoder:
    """Sans-I/O decoder of a line-oriented byte stream; subclasses parse the lines.

    Feed bytes with `receive_data` (b"" means the peer closed), then call `next_event` until it
    returns NEED_DATA. A line longer than `max_line_bytes` yields a fatal Violation; an
    unfinished line at the end of the stream is discarded; after EndOfStream or a fatal
    violation the decoder yields nothing more.
    """

    def __init__(self, max_line_bytes: int, max_message_bytes: int) -> None:
        self._lines = LineBuffer(max_line_bytes)
        self._max_line_bytes = max_line_bytes
        self._max_message_bytes = max_message_bytes
        self._eof = False
        self._done = False

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add bytes from the peer; empty bytes mean end of stream."""
        if data:
            self._lines.feed(data)
        else:
            self._eof = True

    def next_event(self) -> ClientEvent | NeedData:
        """Return the next event, or NEED_DATA."""
        while not self._done:
            try:
                line = self._lines.next_line()
            except LineTooLong:
                self._done = True
                message = f"line is longer than {self._max_line_bytes} bytes"
                return Violation("line_too_long", message, fatal=True)
            if line is None:
                return self._end() if self._eof else NEED_DATA
            if (event := self.parse_line(line)) is not None:
                return event
        return NEED_DATA

    def parse_line(self, line: bytes) -> ClientEvent | None:
        """The event one complete line (without its newline) stands for; None to skip it."""
        raise NotImplementedError

    def _end(self) -> EndOfStream:
        self._done = True
        return EndOfStream()
