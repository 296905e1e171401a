"""The memory-channel broadcaster: wakes every session's send task when the log grows, or
writes the new messages itself to the clients whose send tasks lent it their idle streams.

Publishing never waits. Each subscriber has one bounded memory channel (its outbox, shared
with the session's own replies); `publish` puts a WAKE token in it with `send_nowait`. If the
outbox is full the token is dropped, which is safe by construction: the send task re-reads the
log from its own cursor after *every* item it takes from the outbox, and a full outbox means
items are waiting. Messages therefore travel through the log, never through the channel, so a
slow client cannot lose one or see them out of order, and its memory stays bounded.

The fast path (theory of operation in `fanout`): a send task parked with nothing left to write
may lend its stream (`Subscription.lend`). For such a subscriber `publish` writes the new
records itself, rendered once per dialect for everybody, with one non-blocking write, instead
of waking the task; whatever that write cannot finish goes back to the send task (a WAKE, and
for a partial write the rest of the bytes). Presence and typing notices are offered to a lent
stream the same way (`write_now`). Any wake revokes the loan first, and the send task takes it
back (`reclaim`) before writing anything, so one party at a time owns a stream.

A subscriber whose lag (messages published since it joined that it has not yet been sent)
passes `max_lag` is told to go: `Subscription.lagging()` fires once.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress

import trio

from papaya_trio.fanout import BATCH, WRITE_ERRORS, Handover, Lease
from papaya_trio.protocol.events import Message, ServerEvent
from papaya_trio.records import Record


class Wake(enum.Enum):
    """The token that tells a send task to look at the log again."""

    WAKE = "wake"


WAKE = Wake.WAKE


class Subscription:
    """One send task's place in the broadcast."""

    def __init__(
        self, outbox: trio.MemorySendChannel[object], head: int, on_lagging: Callable[[], None]
    ) -> None:
        self._outbox = outbox
        self.live_from = head
        self.cursor = 0  # last sequence number written to the client in full
        self._on_lagging = on_lagging
        self.kicked = False
        self.lease: Lease | None = None  # the stream, while the send task lends it
        self._handover: Handover | None = None

    def lag(self, head: int) -> int:
        """Live messages published that this subscriber has not been sent."""
        return head - max(self.cursor, self.live_from)

    def wake(self) -> None:
        """Nudge the send task (ending any loan of its stream first); never blocks."""
        self.lease = None
        # A full outbox means items are waiting, and the log is re-read after each of them.
        with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self._outbox.send_nowait(WAKE)

    def lend(self, lease: Lease) -> None:
        """The send task, about to park with everything up to the head written, lends its
        stream: the broadcaster may write to it until `wake` or `reclaim`."""
        self.lease = lease

    def reclaim(self) -> Handover | None:
        """The send task takes its stream back (it resumed); it must first finish the rest of
        a partial direct write, if one is returned."""
        self.lease = None
        handover, self._handover = self._handover, None
        return handover

    def lagging(self) -> None:
        """Tell the session to go (once)."""
        if not self.kicked:
            self.kicked = True
            self._on_lagging()

    def deliver_rest(self, lease: Lease, data: bytes, sent: int, head: int) -> None:
        """The broadcaster's write of the records up to `head` (rendered as `data`) took only
        `sent` bytes: the send task takes the stream back, with the rest to write first if
        some was taken (else it writes from its cursor, meeting any error itself)."""
        if sent:
            self._handover = Handover(lease, memoryview(data)[sent:], head)
        self.wake()

    def write_now(self, events: Sequence[ServerEvent]) -> bool:
        """If the stream is lent, write `events` (notices, not in the log) without waiting.
        True if they are taken care of: written, or begun with the rest handed to the send
        task (woken); False if the caller must queue them for the send task."""
        lease = self.lease
        if lease is None:
            return False
        data = lease.render(events)
        try:
            sent = lease.writer.write(data)
        except WRITE_ERRORS:
            return False  # the send task meets the error on its own write
        if sent:
            lease.writer.count(sent)
        if sent == len(data):
            return True
        if sent:
            self._handover = Handover(lease, memoryview(data)[sent:], self.cursor)
            self.wake()
            return True
        return False


class Broadcaster:
    """Fans 'the log has grown' out to every subscribed send task.

    `recent` is the log's `recent` (the newest records, without waiting), which the fast
    path renders from; without it every subscriber is woken. `on_delivered` is told how many
    live records the fast path delivered in full at each publish (the metrics).
    """

    def __init__(
        self,
        max_lag: int,
        *,
        recent: Callable[[int], Sequence[Record]] | None = None,
        on_delivered: Callable[[int], None] = lambda count: None,
    ) -> None:
        self.max_lag = max_lag
        self._subscribers: set[Subscription] = set()
        self._recent = recent
        self._on_delivered = on_delivered

    def __len__(self) -> int:
        return len(self._subscribers)

    @contextmanager
    def subscribe(
        self, outbox: trio.MemorySendChannel[object], head: int, on_lagging: Callable[[], None]
    ) -> Iterator[Subscription]:
        """Subscribe for the duration of the `with` block."""
        subscription = Subscription(outbox, head, on_lagging)
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            subscription.lease = None
            self._subscribers.discard(subscription)

    def largest_lag(self, head: int) -> int:
        """The lag of the subscriber furthest behind (0 without subscribers)."""
        return max((subscription.lag(head) for subscription in self._subscribers), default=0)

    def publish(self, head: int) -> None:
        """The log's visible head is now `head`: write to the lent streams, wake everybody
        else, drop whoever lags too far."""
        max_lag = self.max_lag
        rendered: dict[tuple[str, int], bytes] = {}  # (kind, cursor) -> bytes, this publish
        last: tuple[str, int, bytes] | None = None  # the latest of those (most leases share it)
        counted: dict[Callable[[int], None], int] = {}  # bytes written, by who counts them
        delivered = 0
        for subscription in list(self._subscribers):
            cursor = subscription.cursor
            live_from = subscription.live_from
            if head - (cursor if cursor > live_from else live_from) > max_lag:
                subscription.lagging()
                continue
            lease = subscription.lease
            if lease is None:
                subscription.wake()
                continue
            kind = lease.kind
            if last is not None and last[0] == kind and last[1] == cursor:
                data = last[2]
            else:
                found = rendered.get((kind, cursor))
                if found is None:
                    found = self._render(lease, cursor, head)
                    if found is None:
                        subscription.wake()
                        continue
                    rendered[kind, cursor] = found
                data = found
                last = (kind, cursor, data)
            writer = lease.writer
            try:  # inline: most writes are taken whole (else see `deliver_rest`)
                sent = writer.write(data)
            except WRITE_ERRORS:
                sent = 0
            if sent:
                counted[writer.count] = counted.get(writer.count, 0) + sent
            if sent == len(data):
                subscription.cursor = head
                delivered += head - cursor
            else:
                subscription.deliver_rest(lease, data, sent, head)
        for count, sent in counted.items():
            count(sent)
        if delivered:
            self._on_delivered(delivered)

    def _render(self, lease: Lease, cursor: int, head: int) -> bytes | None:
        """The records after `cursor` up to `head` in `lease`'s form; None if they are not
        all in the log's memory or are too many for one write (the send task's job)."""
        count = head - cursor
        if self._recent is None or not 0 < count <= BATCH:
            return None
        records = self._recent(count)
        if len(records) != count or records[0].seq != cursor + 1 or records[-1].seq != head:
            return None
        return lease.render([Message(record) for record in records])
