"""Deliberately broken server components, to prove the simulation catches each kind of bug.

They live here, in test code, as subclasses of the real components; the product has no
switch that turns any of this on. The run gets them through `sim.world.Components`, and the
sessions through `Room(session_class=...)`, which every transport uses to build its sessions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from typing import Any, cast

import trio

from papaya_trio.admission import Admission, Ticket
from papaya_trio.broadcaster import Broadcaster, Subscription
from papaya_trio.chatlog import AppendResult, ChatLog, FsyncPolicy, StorageFailed
from papaya_trio.protocol.events import (
    Ack,
    ClientEvent,
    Error,
    FetchHistory,
    HistoryPage,
    Message,
    Pong,
    Presence,
    ServerEvent,
    TypingNotice,
    Violation,
    Welcome,
)
from papaya_trio.protocol.papaya import HISTORY_LINES, history_tail
from papaya_trio.records import Record, encode_record
from papaya_trio.redislog import RedisLog
from papaya_trio.room import Room, RoomSettings
from papaya_trio.server import ChatServer
from papaya_trio.session import FINISH, SEND_BATCH, PapayaTail, Session


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


# --- 5. a send task that polls its outbox instead of waiting (a livelock) -------------------
class PollingSession(Session):
    """Waits for news by checking the outbox in a loop: it checkpoints but never sleeps, so
    the mock clock never moves again once the run gets quiet."""

    async def _send_loop(self, sub: Subscription, welcome_head: int) -> None:
        while not self._outbox.statistics().current_buffer_used:
            await trio.lowlevel.checkpoint()
        await super()._send_loop(sub, welcome_head)


# --- 6. a papayaChat history tail one line short --------------------------------------------
class ShortTailSession(Session):
    """Gives papayaChat clients at most 6 history lines instead of 7 (an off-by-one in the
    tail; the oracle states the tail from docs/protocol.md, not with `history_tail`)."""

    def _start_cursor(self, head: int) -> int:
        if not isinstance(self.identity.history, PapayaTail):
            return super()._start_cursor(head)
        tail = history_tail(self.room.log.recent(HISTORY_LINES))[-(HISTORY_LINES - 1) :]
        return tail[0].seq - 1 if tail else head


# --- 7. a group commit that counts records written during its fsync as durable -------------
class LateTargetLog(ChatLog):
    """Reads how far the fsync reached only after it returns: records written while it ran
    are shown and confirmed as if on disk."""

    async def _wait_durable(self, seq: int) -> None:
        while self._synced < seq:
            self._check_usable()
            if self._syncing:
                await self._sync_done.wait()
                continue
            self._syncing = True
            try:
                await self._storage.sync()
            except OSError as exc:
                self._fail(f"fsync failed: {exc}")
                raise StorageFailed(f"could not sync the log: {exc.strerror or exc}") from exc
            finally:
                self._syncing = False
                done, self._sync_done = self._sync_done, trio.Event()
                done.set()
            target = self._written
            self._synced = max(self._synced, target)
            self._make_visible(target)


# --- 8. a log that skips its final sync at graceful shutdown --------------------------------
class NoFinalSyncLog(ChatLog):
    """Closes without the final fsync: under `fsync = "interval"` or `"never"` the newest
    records are only in the page cache when the server says it has stopped."""

    async def aclose(self) -> None:
        await self._storage.aclose()


# --- 9. closing a session from outside without waking its send task -------------------------
class UnwokenCloseSession(Session):
    """Sets the closing notice but does not wake the send task: the notice waits for the next
    unrelated event (a new message, a reply), and in a lull until the shutdown deadline."""

    def close(self, code: str, message: str) -> None:
        if self._closing is None:
            self._closing = Error(code, message, fatal=True)


# --- 10. group commit waiters that take a running fsync for their own -----------------------
class SharedSyncLog(ChatLog):
    """A writer that finds an fsync running waits for it and counts itself durable, even if
    its record was written after that fsync began."""

    async def _wait_durable(self, seq: int) -> None:
        if self._syncing:
            await self._sync_done.wait()
            self._check_usable()
            self._make_visible(seq)
            return
        await super()._wait_durable(seq)


# --- 11. an accept loop that retries at once when out of descriptors ------------------------
class RetryAtOnceServer(ChatServer):
    """Retries a failed accept without pausing: out of file descriptors it spins, and (under
    the mock clock, as a real one burns a core) nothing else makes progress."""

    async def _accept_loop(
        self, listener: trio.abc.Listener[trio.abc.Stream], handlers: trio.Nursery, kind: str
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError:
                continue
            await self._dispatch(stream, handlers, kind)


# --- 12. a session that orders each batch by timestamp --------------------------------------
class TimeOrderedSession(Session):
    """Writes each batch of messages oldest timestamp first: after the wall clock steps back,
    that is not sequence order."""

    async def _write(self, events: Sequence[ServerEvent]) -> None:
        if all(isinstance(event, Message) for event in events):
            events = sorted(events, key=lambda event: cast(Message, event).record.time_ms)
        await super()._write(events)


# --- 13. an interval sync that falls asleep -------------------------------------------------
class LazyIntervalLog(ChatLog):
    """Under `fsync = "interval"`, syncs every ten intervals instead of every one: records
    shown seconds ago are not on disk when the power goes."""

    async def run_interval_sync(
        self, interval: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await super().run_interval_sync(10 * interval, task_status=task_status)


# --- presence and history paging ---------------------------------------------------------------
class SilentLeaveRoom(Room):
    """A room that forgets to announce a leave: the others keep the name forever."""

    def _announce(self, session: Session, event: str) -> None:
        if event != "leave":
            super()._announce(session, event)


class OffByOneHistorySession(Session):
    """Answers a history request with the page one further on: `before` itself included."""

    async def _history_page(self, request: FetchHistory) -> HistoryPage | Error:
        page = await super()._history_page(replace(request, before=request.before + 1))
        return replace(page, before=request.before) if isinstance(page, HistoryPage) else page


class DoubleLeaveRoom(Room):
    """A room that announces every leave twice."""

    def _announce(self, session: Session, event: str) -> None:
        super()._announce(session, event)
        if event == "leave":
            super()._announce(session, event)


class ShortHistorySession(Session):
    """Answers a history request without its newest message (the page stops below
    `before - 1`)."""

    async def _history_page(self, request: FetchHistory) -> HistoryPage | Error:
        page = await super()._history_page(replace(request, before=request.before - 1))
        return replace(page, before=request.before) if isinstance(page, HistoryPage) else page


# --- 14. admission control that refuses newcomers instead of evicting a flooder ---------------
class NoEvictionAdmission(Admission):
    """Refuses every newcomer while the handshake budget is used up, instead of evicting a
    flooder's handshake: a flood keeps members out."""

    def admit(self, address: object) -> Ticket | None:
        if self.statistics().handshakes >= self.settings.max_handshakes:
            return None
        return super().admit(address)


class NoEvictionServer(ChatServer):
    """A server whose admission control never evicts a handshake."""

    def __init__(self, room: Room, **options: Any) -> None:
        super().__init__(room, **options)
        self.admission = NoEvictionAdmission(self.admission.settings)


# --- 15. a session that never applies the idle timeout --------------------------------------
class NoIdleTimeoutSession(Session):
    """Waits for a silent client for ever: the idle timeout is never applied."""

    async def _receive(self) -> ClientEvent:
        return await self.peer.receive()


# --- 16. shared store (Redis): a store that confirms what it could not store ----------------
class OptimisticRedisLog(RedisLog):
    """When the store does not answer, takes the next number for granted and confirms it."""

    async def append(
        self, user: str, text: str, client_id: str | None = None, **marks: Any
    ) -> AppendResult:
        try:
            return await super().append(user, text, client_id, **marks)
        except StorageFailed:
            if self.broken is not None:
                raise
            return AppendResult(self.head + 1)


# --- 17. shared store: a reader that publishes a head past an entry it has not learned ------
class HeadJumpingRedisLog(RedisLog):
    """Moves the head to the newest entry learned, even over one still missing (another
    host's, or a concurrent append of its own that has not returned yet)."""

    def _learn(self, records: Sequence[Record]) -> None:
        fresh = sorted((r for r in records if r.seq > self.head), key=lambda r: r.seq)
        if fresh:
            self._cache.extend(fresh)
            self._visible = fresh[-1].seq
            self.on_visible(self._visible)


# --- 18. shared store: WAIT forgotten, so an ack may precede the copy to the replica -------
class UnreplicatedRedisLog(RedisLog):
    """Asked for `redis_replicas`, confirms without waiting for any (no WAIT)."""

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self._replicas = 0


# --- 19. a session that gives up a stalled write and goes on (partitions) ------------------------
class GivesUpStalledWriteSession(Session):
    """Gives up a write stuck for a second and goes on as if its bytes had gone out (a
    write timeout that neither drops the client nor writes again): across a partition the
    client misses what the write held, or gets part of a line."""

    async def _write(self, events: Sequence[ServerEvent]) -> None:
        with trio.move_on_after(1.0):
            await super()._write(events)


# --- 20. a session closed from outside without the fatal error -----------------------------------
class UntoldCloseSession(Session):
    """Closed from outside (shutdown, lagging, a storage failure), ends without writing the
    fatal error that says why."""

    async def _write(self, events: Sequence[ServerEvent]) -> None:
        if len(events) == 1 and events[0] is self._closing:
            return
        await super()._write(events)


# --- 21. an idle timeout counted from the hello --------------------------------------------------
class IdleSinceHelloSession(Session):
    """Counts the idle timeout from the hello instead of from the last event received: a
    member that pings is dropped as idle all the same."""

    async def _receive(self) -> ClientEvent:
        timeout = self.room.settings.idle_timeout
        if not timeout or self.identity.user is None:
            return await self.peer.receive()
        if not hasattr(self, "_idle_deadline"):
            self._idle_deadline = trio.current_time() + timeout
        with trio.move_on_at(self._idle_deadline):
            return await self.peer.receive()
        return Violation("idle_timeout", f"nothing received for {timeout:g} s", fatal=True)


# --- 22. a lag bound at a tenth of max_lag -------------------------------------------------------
class TenthLagRoom(Room):
    """Drops a client as lagging at a tenth of `max_lag` behind."""

    def __init__(self, log: ChatLog, key: str, settings: RoomSettings, **options: Any) -> None:
        super().__init__(log, key, settings, **options)
        self.broadcaster.max_lag = max(1, settings.max_lag // 10)
