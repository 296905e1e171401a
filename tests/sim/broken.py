"""Deliberately broken server components, to prove the simulation catches each kind of bug.

They live here, in test code, as subclasses of the real components; the product has no
switch that turns any of this on. The run gets them through `sim.world.Components`, and the
sessions through `Room(session_class=...)`, which every transport uses to build its sessions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import trio

from papaya_trio.broadcaster import Broadcaster, Subscription
from papaya_trio.chatlog import AppendResult, ChatLog, FsyncPolicy, StorageFailed
from papaya_trio.protocol.events import (
    Ack,
    Error,
    Message,
    Pong,
    Presence,
    TypingNotice,
    Welcome,
)
from papaya_trio.records import Record, encode_record
from papaya_trio.room import Room, RoomSettings
from papaya_trio.session import FINISH, SEND_BATCH, Session


class OutboxBroadcaster(Broadcaster):
    """A broadcaster that remembers each subscriber's outbox (the broken ones push into it)."""

    def __init__(self, max_lag: int) -> None:
        super().__init__(max_lag)
        self.outboxes: dict[Subscription, trio.MemorySendChannel[object]] = {}

    @contextmanager
    def subscribe(
        self, outbox: trio.MemorySendChannel[object], head: int, on_lagging: Callable[[], None]
    ) -> Iterator[Subscription]:
        with super().subscribe(outbox, head, on_lagging) as subscription:
            self.outboxes[subscription] = outbox
            try:
                yield subscription
            finally:
                del self.outboxes[subscription]


# --- 1. a broadcaster that drops messages on a full channel ---------------------------------
class DroppingBroadcaster(OutboxBroadcaster):
    """Pushes each new message itself into every outbox and drops it when the outbox is full."""

    def __init__(self, max_lag: int, log: ChatLog) -> None:
        super().__init__(max_lag)
        self._log = log
        self._published = log.head

    def publish(self, head: int) -> None:
        fresh = self._log.recent(head - self._published)
        self._published = head
        for subscription, outbox in list(self.outboxes.items()):
            if subscription.lag(head) > self.max_lag:
                subscription.lagging()
                continue
            for record in fresh:
                with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    outbox.send_nowait(Message(record))


class DroppingRoom(Room):
    """A room wired to the DroppingBroadcaster."""

    def __init__(self, log: ChatLog, key: str, settings: RoomSettings, **options: Any) -> None:
        super().__init__(log, key, settings, **options)
        self.broadcaster = DroppingBroadcaster(settings.max_lag, log)
        log.on_visible = self.broadcaster.publish


class PushedSession(Session):
    """Sends the history from the log, then only what the broadcaster pushes."""

    async def _send_task(self, sub: Subscription, welcome: Welcome) -> None:
        welcome_head = welcome.head
        await self._write([welcome])
        while sub.cursor < welcome_head:
            batch = await self.room.log.read_after(sub.cursor, SEND_BATCH)
            await self._write([Message(r, replay=True) for r in batch])
            sub.cursor = batch[-1].seq
        while self._closing is None:
            item = await self._outbox.receive()
            if item is FINISH:
                return
            if isinstance(item, Message) and item.record.seq > sub.cursor:
                await self._write([item])
                sub.cursor = item.record.seq
            elif isinstance(item, Error | Ack | Pong):
                await self._write([item])
                if isinstance(item, Error) and item.fatal:
                    return
        await self._write([self._closing])


# --- 2. an append that releases the lock between writing and publishing ---------------------
class UnlockedPublishLog(ChatLog):
    """Writes under the lock, then fsyncs and publishes outside it ("so others can write
    meanwhile"): a second append can take the same sequence number."""

    async def append(
        self,
        user: str,
        text: str,
        client_id: str | None = None,
        *,
        action: bool = False,
        dialect: str | None = None,
        verified: bool = False,
    ) -> AppendResult:
        async with self._lock:
            self._check_usable()
            if client_id is not None and (seq := self._dedupe.get((user, client_id))):
                return AppendResult(seq, duplicate=True)
            record = Record(
                self._written + 1,
                self._clock_ms(),
                user,
                text,
                client_id,
                action=action,
                dialect=dialect,
                verified=verified,
            )
            await self._write(encode_record(record))
        if self.fsync is FsyncPolicy.ALWAYS:
            try:
                await self._storage.sync()
            except OSError as exc:
                raise StorageFailed(str(exc)) from exc
        self._remember(record, self._size)
        self._synced = max(self._synced, record.seq)
        self._make_visible(record.seq)
        return AppendResult(record.seq)


# --- 3. a papayaChat-style notifier that can lose a wake-up ---------------------------------
class SignalBroadcaster(OutboxBroadcaster):
    """Like SIGUSR1 and pause(): a wake-up reaches a send task only while it is waiting."""

    def publish(self, head: int) -> None:
        for subscription, outbox in list(self.outboxes.items()):
            if subscription.lag(head) > self.max_lag:
                subscription.lagging()
            elif outbox.statistics().tasks_waiting_receive:
                subscription.wake()


class SignalRoom(Room):
    """A room wired to the SignalBroadcaster."""

    def __init__(self, log: ChatLog, key: str, settings: RoomSettings, **options: Any) -> None:
        super().__init__(log, key, settings, **options)
        self.broadcaster = SignalBroadcaster(settings.max_lag)
        log.on_visible = self.broadcaster.publish


class OneReadPerWakeSession(Session):
    """papayaChat's SEND: one read of the log per wake-up, then wait for the next signal."""

    def notify(self, notice: Presence | TypingNotice) -> None:
        """papayaChat had no presence; its wake-ups would hide the lost ones."""

    async def _send_task(self, sub: Subscription, welcome: Welcome) -> None:
        welcome_head = welcome.head
        await self._write([welcome])
        while True:
            batch = await self.room.log.read_after(sub.cursor, SEND_BATCH)
            if batch:
                await self._write([Message(r, replay=r.seq <= welcome_head) for r in batch])
                sub.cursor = batch[-1].seq
            if self._closing is not None:
                await self._write([self._closing])
                return
            item = await self._outbox.receive()
            if item is FINISH:
                return
            if isinstance(item, Error | Ack | Pong):
                await self._write([item])
                if isinstance(item, Error) and item.fatal:
                    return


# --- 4. a log that confirms before fsync ----------------------------------------------------
class ConfirmsBeforeFsyncLog(ChatLog):
    """Shows and confirms a record as soon as it is written, before it is on disk."""

    async def _wait_durable(self, seq: int) -> None:
        self._make_visible(seq)
