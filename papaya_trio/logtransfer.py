"""`papaya-trio log export` and `log import`: a room's messages as JSON lines, between stores.

One line per message, the log record's own JSON body (docs/log-format.md), oldest first::

    {"seq":1,"t":1764167305123,"user":"alice","text":"hello","id":"c-1"}

Import appends the records as they are, sequence numbers and times kept, through the store's
`restore`, which refuses a record that does not follow the store's last by one: a room moves
into an empty store (or continues a store that ends just before the first line), and never
gets a gap or a duplicate number.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from papaya_trio.logstore import LogStore
from papaya_trio.records import CorruptRecord, Record, parse_record_json

BATCH = 256  # records read or restored at a time


class TransferError(ValueError):
    """An import line is not a message record; the message says which line and why."""


def parse_line(line: str, number: int) -> Record:
    """The record on JSON line `number` (1-based, for the error message)."""
    try:
        return parse_record_json(line)
    except CorruptRecord as exc:
        raise TransferError(f"line {number} is not a message record: {exc}") from None


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
