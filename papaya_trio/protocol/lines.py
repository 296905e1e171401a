"""A bounded line splitter, scanned in linear time."""

from __future__ import annotations


class LineTooLong(Exception):
    """More than the allowed number of bytes arrived without a line end."""


class LineBuffer:
    """Collects bytes and hands out complete lines (terminator stripped).

    The buffer never holds more than `max_line_bytes` of an unfinished line: past that,
    `next_line` raises LineTooLong. Each byte is scanned for the terminator once.
    """

    def __init__(self, max_line_bytes: int, terminator: bytes = b"\n") -> None:
        self._max = max_line_bytes
        self._terminator = terminator
        self._data = bytearray()
        self._start = 0
        self._scanned = 0

    def feed(self, data: bytes | bytearray) -> None:
        """Append received bytes."""
        self._data += data

    @property
    def unfinished(self) -> int:
        """Bytes received that are not yet part of a complete line."""
        return len(self._data) - self._start

    def next_line(self) -> bytes | None:
        """Return the next complete line, or None if more data is needed."""
        end = self._data.find(self._terminator, max(self._start, self._scanned))
        if end == -1:
            self._scanned = len(self._data)
            if len(self._data) - self._start > self._max:
                raise LineTooLong
            self._compact()
            return None
        if end + 1 - self._start > self._max:
            raise LineTooLong
        line = bytes(self._data[self._start : end])
        self._start = end + len(self._terminator)
        self._scanned = self._start
        return line

    def take_rest(self, n: int) -> bytes:
        """Remove and return up to `n` bytes from the front, ignoring lines."""
        chunk = bytes(self._data[self._start : self._start + n])
        self._start += len(chunk)
        self._scanned = max(self._scanned, self._start)
        return chunk

    def _compact(self) -> None:
        if self._start:
            del self._data[: self._start]
            self._scanned -= self._start
            self._start = 0
