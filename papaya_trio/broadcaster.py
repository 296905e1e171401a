"""The memory-channel broadcaster: wakes every session's send task when the log grows.

Publishing never waits. Each subscriber has one bounded memory channel (its outbox, shared
with the session's own replies); `publish` puts a WAKE token in it with `send_nowait`. If the
outbox is full the token is dropped, which is safe by construction: the send task re-reads the
log from its own cursor after *every* item it takes from the outbox, and a full outbox means
items are waiting. Messages therefore travel through the log, never through the channel, so a
slow client cannot lose one or see them out of order, and its memory stays bounded.

A subscriber whose lag (messages published since it joined that it has not yet been sent)
passes `max_lag` is told to go: `Subscription.lagging()` fires once.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import trio


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
        self.cursor = 0  # last sequence number written to the client, kept by the send task
        self._on_lagging = on_lagging
        self.kicked = False

    def lag(self, head: int) -> int:
        """Live messages published that this subscriber has not been sent."""
        return head - max(self.cursor, self.live_from)

    def wake(self) -> None:
        """Nudge the send task; never blocks."""
        # A full outbox means items are waiting, and the log is re-read after each of them.
        with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self._outbox.send_nowait(WAKE)

    def lagging(self) -> None:
        """Tell the session to go (once)."""
        if not self.kicked:
            self.kicked = True
            self._on_lagging()


class Broadcaster:
    """Fans 'the log has grown' out to every subscribed send task."""

    def __init__(self, max_lag: int) -> None:
        self.max_lag = max_lag
        self._subscribers: set[Subscription] = set()

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
            self._subscribers.discard(subscription)

    def largest_lag(self, head: int) -> int:
        """The lag of the subscriber furthest behind (0 without subscribers)."""
        return max((subscription.lag(head) for subscription in self._subscribers), default=0)

    def publish(self, head: int) -> None:
        """The log's visible head is now `head`: wake everybody, drop whoever lags too far."""
        for subscription in list(self._subscribers):
            if subscription.lag(head) > self.max_lag:
                subscription.lagging()
            else:
                subscription.wake()
