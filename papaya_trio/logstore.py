"""What the room's log promises, whichever store keeps it: the one interface of the log stores.

Two stores implement `LogStore`: the file store (`chatlog.ChatLog` over `storage.FileStorage`,
the default, nothing else to run) and the Redis store (`redislog.RedisLog`, one Redis stream
that several server processes share). Sessions, the room and the transports only ever see this
interface, so both stores keep the same promises:

- **Dense order.** Stored messages get sequence numbers 1, 2, 3, ... with no gap, and every
  reader sees them in that order (with Redis: every reader on every server process).
- **Stored once.** A resend with the same (user, id) as a stored message is not stored again;
  its append returns the original sequence number with `duplicate=True`.
- **Exact resume.** `read_after(cursor, ...)` returns the records after `cursor`, oldest
  first, so a client that reconnects with `since` N (to any server sharing the store) gets
  every message after N once. `catch_up(N)` first brings the head to N if the log holds N,
  for a server that has not heard of N yet: otherwise the session would clamp N to its head
  and send again what the client already has.
- **Tails.** `recent(count)` serves the papayaChat dialect's history tail without waiting;
  the native dialect's `history` is `read_after(head - count, ...)`.
- **Durability.** With `fsync = "always"` an append returns (so its sender is acknowledged)
  only once the store reports the record durable: fsynced for the file store, stored by a Redis
  that runs `appendfsync always` (and copied to `redis_replicas` replicas) for the Redis store.
- **Failures are explicit.** An append that cannot be stored raises `StorageFailed` and is
  never acknowledged; the store stays usable unless it says otherwise in `broken`.

`run` is the store's own background work, started by the server next to its listeners: the
interval fsync for the file store, the stream reader (one per process) for the Redis store.
`restore` appends records as they are (sequence numbers and times kept) for `log import`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from papaya_trio.records import Record


class FsyncPolicy(enum.StrEnum):
    """When appended records are forced to durable storage."""

    ALWAYS = "always"
    INTERVAL = "interval"
    NEVER = "never"


class StorageFailed(Exception):
    """The message could not be stored; it was not stored."""


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Outcome of an append: the record's sequence number, and whether it was a resend."""

    seq: int
    duplicate: bool = False


class LogStore(Protocol):
    """The room's append-only log, as sessions and the room use it."""

    fsync: FsyncPolicy
    on_visible: Callable[[int], None]
    """Called with the new head each time it moves (the room's broadcaster)."""

    @property
    def head(self) -> int:
        """Sequence number of the newest record readers may see (0 for an empty log)."""
        ...

    @property
    def broken(self) -> str | None:
        """Why the store refuses appends for good, or None while it accepts them."""
        ...

    async def append(self, user: str, text: str, client_id: str | None = None) -> AppendResult:
        """Store one message; return its sequence number once it is durable per `fsync`.

        Raises StorageFailed if it was not stored.
        """
        ...

    async def read_after(self, cursor: int, limit: int) -> list[Record]:
        """Up to `limit` visible records after `cursor`, oldest first (fewer is no end)."""
        ...

    async def catch_up(self, seq: int) -> None:
        """Move the head to `seq` now if the log holds it (a client that saw `seq` elsewhere
        is resuming here); raise StorageFailed if the store cannot tell."""
        ...

    def recent(self, count: int) -> list[Record]:
        """The newest `count` visible records, oldest first, without waiting."""
        ...

    async def restore(self, records: Sequence[Record]) -> None:
        """Append `records` as they are; each must follow the head by one (log import)."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The store's background work; never returns (cancel it to stop)."""
        ...

    async def aclose(self) -> None:
        """Make everything durable and release the store."""
        ...
