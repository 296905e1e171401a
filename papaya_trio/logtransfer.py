"""`papaya-trio log export` and `log import`: a room's messages as JSON lines, between stores.

One line per message, the log record's own JSON body (docs/log-format.md), oldest first::

    {"seq":1,"t":1764167305123,"user":"alice","text":"hello","id":"c-1"}

Import appends the records as they are, sequence numbers and times kept, through the store's
`restore`, which refuses a record that does not follow the store's last by one: a room moves
into an empty store (or continues a store that ends just before the first line), and never
gets a gap or a duplicate number.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable

from papaya_trio.logstore import LogStore
from papaya_trio.records import Record

BATCH = 256  # records read or restored at a time


class TransferError(ValueError):
    """An import line is not a message record; the message says which line and why."""


def record_line(record: Record) -> str:
    """One message as a JSON line (without its newline)."""
    fields: dict[str, object] = {
        "seq": record.seq,
        "t": record.time_ms,
        "user": record.user,
        "text": record.text,
    }
    if record.client_id is not None:
        fields["id"] = record.client_id
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


def parse_line(line: str, number: int) -> Record:
    """The record on JSON line `number` (1-based, for the error message)."""
    try:
        fields = json.loads(line)
        user, text, client_id = fields["user"], fields["text"], fields.get("id")
        record = Record(fields["seq"], fields["t"], user, text, client_id)
    except (ValueError, KeyError, TypeError) as exc:
        raise TransferError(f"line {number} is not a message record: {exc}") from None
    if not (
        type(record.seq) is int
        and type(record.time_ms) is int
        and isinstance(record.user, str)
        and isinstance(record.text, str)
        and (record.client_id is None or isinstance(record.client_id, str))
    ):
        raise TransferError(f"line {number}: a field has the wrong type")
    return record


async def export_records(store: LogStore) -> AsyncIterator[Record]:
    """Every record of `store` up to its head when the export started, oldest first."""
    end, cursor = store.head, 0
    while cursor < end:
        batch = await store.read_after(cursor, min(BATCH, end - cursor))
        if not batch:
            return
        for record in batch:
            yield record
        cursor = batch[-1].seq


async def import_lines(store: LogStore, lines: Iterable[str]) -> int:
    """Restore every record in `lines` (blank lines skipped) into `store`; return how many."""
    batch: list[Record] = []
    count = 0
    for number, line in enumerate(lines, 1):
        if line.strip():
            batch.append(parse_line(line, number))
        if len(batch) >= BATCH:
            await store.restore(batch)
            count += len(batch)
            batch = []
    if batch:
        await store.restore(batch)
        count += len(batch)
    return count
