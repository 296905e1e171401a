"""The log's record format, shared by trio mode and fork mode (see docs/log-format.md).

A record is one line: eight lower-case hex digits of the CRC-32 of the JSON body, a space, the
JSON body (UTF-8, no raw newline can occur inside it), and a newline::

    f98a0f49 {"seq":1,"t":1764167305123,"user":"alice","text":"hello","id":"c-1"}

Optional fields (`a` action, `d` dialect, `v` verified) are written only when set, so a record
without them is byte for byte what older servers wrote, and older logs read as before.

The newline makes records self-delimiting; a line without its newline is torn, a line whose CRC
does not match or whose sequence number is not the previous one plus one is corrupt. This module
is pure (no I/O): the log and the fork mode both use it to encode and to scan.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime

CRC_HEX = 8
_json_decode = json.JSONDecoder().decode  # json.loads without its per-call checks


@dataclass(frozen=True, slots=True)
class Record:
    """One stored chat message."""

    seq: int
    time_ms: int
    user: str
    text: str
    client_id: str | None = None
    action: bool = False  # a `/me` action: `text` is the action without the name
    dialect: str | None = None  # "papaya" for a message from the papayaChat dialect
    verified: bool = False  # the sender's name was verified by a personal token

    @property
    def raw_line(self) -> str:
        """The message as the papayaChat dialect writes it, without the final newline.

        Each line of a multi-line text becomes a line of its own (`alice: one`, `alice: two`);
        an action reads `* alice waves`.
        """
        prefix = f"* {self.user} " if self.action else f"{self.user}: "
        return "\n".join(prefix + line for line in self.text.split("\n"))

    @property
    def iso_time(self) -> str:
        """The store time as ISO 8601 UTC with milliseconds, e.g. 2026-11-26T14:28:25.123Z."""
        moment = datetime.fromtimestamp(self.time_ms / 1000, UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{self.time_ms % 1000:03d}Z"


class CorruptRecord(ValueError):
    """A complete line that is not a valid record."""


def record_meta(record: Record) -> str:
    """The record's optional fields (action, dialect, verified) as compact JSON, or "" when it
    has none: how stores that keep fields apart (Redis) carry them."""
    fields: dict[str, object] = {}
    if record.action:
        fields["a"] = 1
    if record.dialect is not None:
        fields["d"] = record.dialect
    if record.verified:
        fields["v"] = 1
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")) if fields else ""


def with_meta(record: Record, meta: str | None) -> Record:
    """`record` with the optional fields in `meta` (from `record_meta`); ValueError if bad."""
    if not meta:
        return record
    fields = json.loads(meta)
    dialect = fields.get("d")
    if not (dialect is None or isinstance(dialect, str)):
        raise ValueError("dialect must be a string")
    return replace(
        record, action=fields.get("a") == 1, dialect=dialect, verified=fields.get("v") == 1
    )


def record_json(record: Record) -> str:
    """The record's JSON body: compact, non-ASCII kept as it is, `id` only when there is one."""
    fields: dict[str, object] = {
        "seq": record.seq,
        "t": record.time_ms,
        "user": record.user,
        "text": record.text,
    }
    if record.client_id is not None:
        fields["id"] = record.client_id
    body = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    meta = record_meta(record)
    return body[:-1] + "," + meta[1:] if meta else body


def encode_record(record: Record) -> bytes:
    """Return the record as one log line, newline included."""
    body = record_json(record).encode()
    return b"%08x " % zlib.crc32(body) + body + b"\n"


def decode_record(line: bytes) -> Record:
    """Parse one log line (with or without its newline); raise CorruptRecord if it is not one."""
    line = line.rstrip(b"\n")
    if len(line) < CRC_HEX + 2 or line[CRC_HEX : CRC_HEX + 1] != b" ":
        raise CorruptRecord("record has no checksum prefix")
    body = line[CRC_HEX + 1 :]
    if line[:CRC_HEX].strip(b"0123456789abcdef"):  # int() would take "A", " " or "_" too
        raise CorruptRecord("record checksum is not lower-case hexadecimal")
    expected = int(line[:CRC_HEX], 16)
    if zlib.crc32(body) != expected:
        raise CorruptRecord("record checksum does not match")
    return parse_record_json(body)


def parse_record_json(body: bytes | str) -> Record:
    """The record in a JSON body; raise CorruptRecord if it is not one."""
    try:
        if type(body) is bytes and body[:1] == b"{" and body[1:2] != b"\x00":
            # What json.loads does with these bytes (it would detect UTF-8), minus detecting.
            fields = _json_decode(body.decode("utf-8", "surrogatepass"))
        else:
            fields = json.loads(body)
        # Positional: seq, time_ms, user, text, client_id, action, dialect, verified.
        record = Record(
            fields["seq"],
            fields["t"],
            fields["user"],
            fields["text"],
            fields.get("id"),
            fields.get("a") == 1,
            fields.get("d"),
            fields.get("v") == 1,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptRecord(f"record body is not valid: {exc}") from None
    if not (
        type(record.seq) is int
        and type(record.time_ms) is int
        and isinstance(record.user, str)
        and isinstance(record.text, str)
        and (record.client_id is None or isinstance(record.client_id, str))
        and (record.dialect is None or isinstance(record.dialect, str))
    ):
        raise CorruptRecord("record fields have the wrong types")
    return record


@dataclass(frozen=True, slots=True)
class ScannedRecord:
    """A record found by RecordScanner, with where its line ends in the file."""

    record: Record
    end_offset: int


class RecordScanner:
    """Incremental scanner: feed it the file's bytes in order, get records with their offsets.

    It checks that sequence numbers run on from `after_seq` one by one. At the first bad line it
    stops and sets `bad_offset` and `problem`; `pending` is the number of bytes of an unfinished
    last line (a torn tail once the input has ended).
    """

    def __init__(self, start_offset: int = 0, after_seq: int = 0) -> None:
        self.offset = start_offset
        self.last_seq = after_seq
        self.bad_offset: int | None = None
        self.problem: str | None = None
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete line held back."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[ScannedRecord]:
        """Return every complete, valid record that `data` finishes."""
        found: list[ScannedRecord] = []
        if self.bad_offset is not None:
            return found
        self._buffer += data
        start = 0
        while (newline := self._buffer.find(b"\n", start)) != -1:
            line = bytes(self._buffer[start : newline + 1])
            try:
                record = decode_record(line)
                if record.seq != self.last_seq + 1:
                    raise CorruptRecord(
                        f"sequence number {record.seq} does not follow {self.last_seq}"
                    )
            except CorruptRecord as exc:
                self.bad_offset = self.offset
                self.problem = str(exc)
                del self._buffer[:]
                return found
            self.offset += len(line)
            self.last_seq = record.seq
            start = newline + 1
            found.append(ScannedRecord(record, self.offset))
        del self._buffer[:start]
        return found
