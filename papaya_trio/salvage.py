"""Telling a damaged log's intact records from its damaged bytes (pure, no I/O).

Theory of operation
-------------------
`Salvager` is fed the log's bytes in order and splits them into pieces that together are
exactly those bytes: `Intact` (one whole record line whose checksum matches and whose sequence
number is above every one before it) and `Damaged` (anything else: a line that fails its
checksum or does not parse, a repeated sequence number, a torn last line). Nothing is dropped
and nothing is invented, so for any input ``sum(len(piece.data)) == len(input)``.

It finds intact records that damage has glued to their neighbour: a flipped bit that turns the
newline before a record into something else makes one line of two. A line that is not a record
is searched for a record start (eight hex digits, a space, ``{``) from which the rest of the
line is a valid record; the bytes before it are damaged, the rest intact. (A record's text
cannot fake that: JSON escapes the quotes inside strings, so a record inside a text never
parses as the line's own end.)

Sequence numbers: an intact record numbered above the last one plus one leaves a *gap* (the
numbers of records lost to damage, or trimmed by retention before the oldest kept one); an
intact record numbered at or below the last one is a *repeat* (two servers appended to one
log) and is damaged, so that the log's numbering stays dense and increasing.

`lost_record` makes the marker a repair writes in place of each lost number, so that a number
that may have been acknowledged to somebody is never given to another message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from papaya_trio.records import CorruptRecord, Record, decode_record

MAX_LINE = 64 * 1024 * 1024  # no record is this long; an endless line is cut into damage
LOST_USER = "papaya-trio log"  # a space: no client can take this name
_RECORD_START = re.compile(rb"[0-9a-f]{8} \{")


@dataclass(frozen=True, slots=True)
class Intact:
    """A valid record's whole line, newline included, starting at byte `offset`."""

    offset: int
    data: bytes
    record: Record


@dataclass(frozen=True, slots=True)
class Damaged:
    """Bytes that are not an intact record, starting at byte `offset`, and why."""

    offset: int
    data: bytes
    reason: str


Piece = Intact | Damaged


class Salvager:
    """Incremental: feed the bytes in order, then `finish()`; see the module docstring."""

    def __init__(self, start_offset: int = 0, after_seq: int = 0) -> None:
        self.offset = start_offset  # where the unconsumed bytes begin
        self.last_seq = after_seq
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Piece]:
        """The pieces that `data` completes (whole lines, or an over-long line as damage)."""
        self._buffer += data
        pieces: list[Piece] = []
        start = 0
        while (newline := self._buffer.find(b"\n", start)) != -1:
            pieces += self._line(bytes(self._buffer[start : newline + 1]))
            start = newline + 1
        del self._buffer[:start]
        if len(self._buffer) > MAX_LINE:
            pieces.append(self._damage(bytes(self._buffer), f"line longer than {MAX_LINE} bytes"))
            del self._buffer[:]
        return pieces

    def finish(self) -> list[Piece]:
        """The end of the input: an unfinished last line is a torn record."""
        if not self._buffer:
            return []
        torn = bytes(self._buffer)
        del self._buffer[:]
        return [self._damage(torn, f"torn record ({len(torn)} bytes without a line end)")]

    def _line(self, line: bytes) -> list[Piece]:
        try:
            record = decode_record(line)
        except CorruptRecord as exc:
            return self._resync(line, str(exc))
        if record.seq <= self.last_seq:
            return [self._damage(line, f"sequence number {record.seq} repeats")]
        return [self._intact(line, record)]

    def _resync(self, line: bytes, reason: str) -> list[Piece]:
        for match in _RECORD_START.finditer(line, 1):
            try:
                record = decode_record(line[match.start() :])
            except CorruptRecord:
                continue
            if record.seq > self.last_seq:
                damaged = self._damage(line[: match.start()], reason)
                return [damaged, self._intact(line[match.start() :], record)]
        return [self._damage(line, reason)]

    def _intact(self, line: bytes, record: Record) -> Intact:
        piece = Intact(self.offset, line, record)
        self.offset += len(line)
        self.last_seq = record.seq
        return piece

    def _damage(self, data: bytes, reason: str) -> Damaged:
        piece = Damaged(self.offset, data, reason)
        self.offset += len(data)
        return piece


def lost_record(seq: int, time_ms: int, where: str) -> Record:
    """The marker stored in place of message `seq`, lost to damage (its bytes are `where`)."""
    text = f"(message {seq} was lost: it was damaged in the log; its bytes are kept in {where})"
    return Record(seq, time_ms, LOST_USER, text)


def lost_count(trailing: bytes) -> int:
    """How many records damaged bytes at the end of a log held: one per complete line.

    A complete line was a whole record once (writers write whole lines), so it may have been
    acknowledged; a torn last fragment never was. A flipped bit can merge two lines into one
    (then one number too few is kept back) or split one (one too many, which is harmless).
    """
    return trailing.count(b"\n")
