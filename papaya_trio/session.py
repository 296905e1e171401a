"""A client session: one nursery, one recv task, one send task.

Theory of operation
-------------------
The recv task reads client events, stores messages in the log and queues replies (acks,
errors, pongs) in the session's outbox, a bounded memory channel. The send task is the only
writer to the client: it writes the welcome (followed by a non-fatal `history_trimmed` error
when the client's `since` is older than the log's oldest kept record), then loops "write every
visible log record after my cursor, then take one item from the outbox". The broadcaster puts
WAKE tokens in the same outbox, so new messages, history and replies all leave through one
task, in log order.

The fan-out fast path (`fanout`): while the send task waits on its outbox with everything up
to the log's head written, it lends its stream to the broadcaster (plain TCP only: `peer.lease`),
which then writes new messages and notices to it directly, without waking it. The send task
takes the stream back (`Subscription.reclaim`) as soon as it resumes, before it writes
anything, first finishing any direct write the socket took only in part; any wake-up ends the
loan as well. So the send task is still the only writer whenever it runs, and the stream has
one owner at any moment.

When either task ends the nursery is cancelled, so the other ends too, and the peer is closed
by the caller. A client that half-closes gets its pending replies first: the recv task queues
FINISH and the send task ends after writing everything before it.

A session can be closed from outside (`close`): the send task writes a fatal error with the
reason and ends. If the client has stopped reading and the send task is stuck in a write when
its lag passes the bound, the write itself is cancelled and the connection dropped.

Two limits act in the recv task, and only there, so they never delay what others receive:

- **Idle timeout.** A native client (TCP or WebSocket) that sends nothing for `idle_timeout`
  seconds is told `idle_timeout` (fatal) and dropped: a silent client cannot hold its slot for
  ever. Clients keep a quiet connection with `ping`. papayaChat clients have no way to ping,
  so they are exempt; TCP keepalive reaps them when their host is gone.
- **Rate limits ("fakelag", as Ergo does).** Each event from the client takes a token of the
  session's message bucket (`rate_messages` per second, `rate_burst` at once) and a `send`
  takes its text's UTF-8 bytes from the byte bucket (`rate_bytes`, `rate_burst_bytes`). The
  event is handled first; then, when a bucket is short, the recv task waits for the tokens
  before it reads the next event. A client past its rate is thus slowed down by TCP
  backpressure (its writes block), loses nothing and needs no new reply: this works the same
  for both TCP dialects and WebSocket. The wait is on trio's clock (`papaya_trio.bucket`).

Presence and typing notices from the room (`notify`) wait in a bounded queue of their own and
are written by the send task between log batches, woken like new messages. A typing notice is
a hint and is dropped when that queue is full; a presence notice is not: a client that lets
NOTICE_LIMIT notices pile up is dropped as lagging, so a member list never silently diverges.
A history request is queued by the recv task and answered by the send task, which reads the
page from the log then (at most MAX_HISTORY_LIMIT records through the log's bounded reads), so
a client asking faster than it reads holds no more than its outbox of small requests.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from papaya_trio import SERVER_NAME
from papaya_trio.broadcaster import Subscription
from papaya_trio.bucket import TokenBucket
from papaya_trio.chatlog import StorageFailed
from papaya_trio.droplog import DroppedLines
from papaya_trio.fanout import BATCH
from papaya_trio.peer import Peer, PeerGone, refuse
from papaya_trio.protocol.events import (
    Ack,
    ClientEvent,
    EndOfStream,
    Error,
    FetchHistory,
    Hello,
    HistoryPage,
    KeyPresented,
    Message,
    Ping,
    Pong,
    Presence,
    SendText,
    ServerEvent,
    Typing,
    TypingNotice,
    Violation,
    Welcome,
)
from papaya_trio.protocol.native import history_span
from papaya_trio.protocol.papaya import HISTORY_LINES, history_tail

if TYPE_CHECKING:
    from papaya_trio.room import Room

logger = logging.getLogger(__name__)

OUTBOX_ITEMS = 64
SEND_BATCH = BATCH
NOTICE_LIMIT = 256  # presence and typing notices waiting for one client


class Finish(enum.Enum):
    """Queued by the recv task after the client's last event: flush and end."""

    FINISH = "finish"


FINISH = Finish.FINISH


@dataclass(frozen=True, slots=True)
class LastN:
    """History: the newest `count` messages."""

    count: int


@dataclass(frozen=True, slots=True)
class Since:
    """History: every message after `seq`."""

    seq: int


@dataclass(frozen=True, slots=True)
class PapayaTail:
    """History: the papayaChat tail (7 lines within 1050 bytes)."""


HistoryRequest = LastN | Since | PapayaTail


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is connected: `user` is None for papayaChat clients, who name themselves per line;
    `verified` if a personal token proved the name; `dialect` is native, websocket or papaya."""

    user: str | None
    history: HistoryRequest
    verified: bool = False
    dialect: str = "native"


class NameTaken(Exception):
    """The hello's name is held by another connection and this one is not verified."""

    def __init__(self, user: str) -> None:
        super().__init__(user)
        self.error = Error("name_taken", f"{user} is already connected", fatal=True)


class Session:
    """One client's nursery with its recv and send tasks. Run it with `await session.run()`."""

    def __init__(self, room: Room, peer: Peer, identity: Identity) -> None:
        self.room = room
        self.peer = peer
        self.identity = identity
        self.end_reason = "open"
        self._closing: Error | None = None
        self._send_side, self._outbox = trio.open_memory_channel[object](OUTBOX_ITEMS)
        self._send_scope = trio.CancelScope()
        self._writing = False
        self._subscription: Subscription | None = None
        self._lease = peer.lease()  # None: this stream stays on the normal path
        settings = room.settings
        self._messages = (
            TokenBucket(settings.rate_messages, settings.rate_burst)
            if settings.rate_messages
            else None
        )
        self._bytes = (
            TokenBucket(settings.rate_bytes, settings.rate_burst_bytes)
            if settings.rate_bytes
            else None
        )
        self._slowed = False
        self._notices: deque[Presence | TypingNotice] = deque()
        self.dropped = DroppedLines(peer.label)

    def __repr__(self) -> str:
        lag = self._subscription.lag(self.room.log.head) if self._subscription else 0
        who = self.identity.user or "papaya"
        return f"<Session {who} {self.peer.label} {self.end_reason.upper()} lag={lag}>"

    def close(self, code: str, message: str) -> None:
        """Ask the session to tell the client `message` and close (no effect if closing)."""
        if self._closing is None:
            self._closing = Error(code, message, fatal=True)
            if self._subscription is not None:
                self._subscription.wake()  # the send task checks _closing after each item

    def notify(self, notice: Presence | TypingNotice) -> None:
        """Queue a presence or typing notice for the client (never blocks; see the module)."""
        if self._closing is not None or self.identity.dialect == "papaya":
            return  # the papayaChat dialect has no form for them
        if len(self._notices) >= NOTICE_LIMIT:
            if isinstance(notice, Presence):
                self._drop_lagging(f"you fell more than {NOTICE_LIMIT} presence notices behind")
            return
        sub = self._subscription
        if sub is not None and not self._notices and sub.write_now([notice]):
            return  # written by the fast path (see `fanout`)
        self._notices.append(notice)
        if sub is not None:
            sub.wake()

    def _on_lagging(self) -> None:
        self._drop_lagging(f"you fell more than {self.room.settings.max_lag} messages behind")

    def _drop_lagging(self, message: str) -> None:
        self.room.metrics.evicted_for_lag()
        self._end("lagging")
        self.close("lagging", message)
        if self._writing:
            self._send_scope.cancel()  # stuck writing to a client that stopped reading

    async def run(self) -> str:
        """Run until the client leaves or is closed; return why it ended."""
        log = self.room.log
        if isinstance(self.identity.history, Since) and self.identity.history.seq > log.head:
            try:  # the client may have seen `since` on another server sharing the log
                await log.catch_up(self.identity.history.seq)
            except StorageFailed as exc:
                self.close("storage_failed", f"cannot read the log now: {exc}")
        head = log.head
        try:
            with (
                self.room.joined(self) as online,
                self.room.broadcaster.subscribe(self._send_side, head, self._on_lagging) as sub,
            ):
                self._subscription = sub
                sub.cursor = self._start_cursor(head)
                welcome = Welcome(
                    SERVER_NAME,
                    self.identity.user or "",
                    head,
                    first=log.first,
                    verified=self.identity.verified,
                    online=online,
                )
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._paired, nursery.cancel_scope, self._recv_task)
                    nursery.start_soon(
                        self._paired, nursery.cancel_scope, self._send_task, sub, welcome
                    )
        except NameTaken as taken:
            logger.warning("%s: refused: %s", self.peer.label, taken.error.message)
            self._end(taken.error.code)
            await refuse(self.peer, taken.error)
        self.dropped.summarise()
        return self.end_reason

    async def _paired(
        self, scope: trio.CancelScope, task: Callable[..., Awaitable[None]], *args: object
    ) -> None:
        """Run one of the pair; whichever way it ends, the other is cancelled."""
        try:
            await task(*args)
        except PeerGone:
            self._end("connection lost")
        finally:
            scope.cancel()

    def _end(self, reason: str) -> None:
        if self.end_reason == "open":
            self.end_reason = reason

    def _start_cursor(self, head: int) -> int:
        match self.identity.history:
            case Since(seq=seq):
                return min(seq, head)
            case LastN(count=count):
                return max(0, head - count)
            case PapayaTail():
                tail = history_tail(self.room.log.recent(HISTORY_LINES))
                return tail[0].seq - 1 if tail else head

    # --- the send task ------------------------------------------------------------------
    async def _send_task(self, sub: Subscription, welcome: Welcome) -> None:
        with self._send_scope:
            await self._send_loop(sub, welcome)
        if self._send_scope.cancelled_caught:
            raise PeerGone("write abandoned: the client stopped reading")

    async def _send_loop(self, sub: Subscription, welcome: Welcome) -> None:
        welcome_head = welcome.head
        greeting: list[ServerEvent] = [welcome]
        first = self.room.log.first
        if isinstance(self.identity.history, Since) and self.identity.history.seq < first - 1:
            # Retention dropped messages the client has not seen: say so before the replay.
            notice = f"messages before {first} are no longer kept; history starts at {first}"
            greeting.append(Error("history_trimmed", notice))
        await self._write(greeting)
        while True:
            while self._closing is None:
                try:
                    batch = await self.room.log.read_after(sub.cursor, SEND_BATCH)
                except StorageFailed as exc:  # the client resumes later with `since`
                    self.close("storage_failed", f"cannot read the log now: {exc}")
                    break
                if not batch:
                    break
                await self._write([Message(r, replay=r.seq <= welcome_head) for r in batch])
                sub.cursor = batch[-1].seq
                self.room.metrics.delivered(batch, welcome_head)
            if self._closing is not None:
                self._end(self._closing.code)
                await self._write([self._closing])
                return
            if self._notices:
                notices = list(self._notices)
                self._notices.clear()
                await self._write(notices)
                continue
            item = await self._next_item(sub)
            if item is FINISH:
                self._end("client closed")
                return
            if isinstance(item, FetchHistory):
                await self._write([await self._history_page(item)])
            elif isinstance(item, Error | Ack | Pong):
                await self._write([item])
                if isinstance(item, Error) and item.fatal:
                    self._end(item.code)
                    return

    async def _next_item(self, sub: Subscription) -> object:
        """The next item of the outbox. While waiting with everything up to the head written,
        the stream is lent to the broadcaster (see `fanout`); taken back before anything else."""
        if self._lease is not None and sub.cursor == self.room.log.head:
            sub.lend(self._lease)
        try:
            item = await self._outbox.receive()
        finally:
            handover = sub.reclaim()
        if handover is not None:  # the broadcaster wrote part of a batch: finish it
            self._writing = True
            try:
                await handover.lease.finish(handover.rest)
            finally:
                self._writing = False
            if handover.cursor > sub.cursor:
                self.room.metrics.delivered_live(handover.cursor - sub.cursor)
                sub.cursor = handover.cursor
        return item

    async def _history_page(self, request: FetchHistory) -> HistoryPage | Error:
        """The newest `limit` stored messages below `before`, read through the log's index."""
        log = self.room.log
        span = history_span(request.before, request.limit, log.head)
        try:
            records = await log.read_after(span.start - 1, len(span)) if span else []
        except StorageFailed as exc:
            return Error("storage_failed", str(exc), False, request.request_id)
        return HistoryPage(request.request_id, request.before, tuple(records), log.first)

    async def _write(self, events: Sequence[ServerEvent]) -> None:
        self._writing = True
        try:
            await self.peer.send(events)
        finally:
            self._writing = False

    # --- the recv task ------------------------------------------------------------------
    async def _recv_task(self) -> None:
        while True:
            event = await self._receive()
            if not await self._handle(event):
                break
            await self._pace(event)
        # Nothing more to read: the send task flushes what was queued, ends, and cancels us.
        await trio.sleep_forever()

    async def _receive(self) -> ClientEvent:
        """The next event; for a native client silent for `idle_timeout`, a fatal violation."""
        timeout = self.room.settings.idle_timeout
        if not timeout or self.identity.user is None:
            return await self.peer.receive()
        with trio.move_on_after(timeout):
            return await self.peer.receive()
        return Violation("idle_timeout", f"nothing received for {timeout:g} s", fatal=True)

    async def _pace(self, event: ClientEvent) -> None:
        """Wait until the client's buckets allow its next event (see the module docstring)."""
        waited = 0.0
        if self._messages is not None:
            waited += await self._messages.take()
        if self._bytes is not None and isinstance(event, SendText):
            waited += await self._bytes.take(len(event.text.encode()))
        if waited and not self._slowed:
            self._slowed = True  # once per session: a flood must not write a line per message
            who = self.identity.user or "papayaChat client"
            logger.info("%s: %s is over the rate limit: reading slowed down", self.peer.label, who)

    async def _handle(self, event: ClientEvent) -> bool:
        """Act on one client event; False once the client has said its last word."""
        match event:
            case SendText():
                await self._store(event)
            case Typing():
                self.room.typing(self)
            case FetchHistory():
                await self._send_side.send(event)
            case Ping(ping_id=ping_id):
                await self._send_side.send(Pong(ping_id))
            case Violation(code=code, message=message, fatal=fatal, client_id=client_id):
                if self.identity.dialect == "papaya":
                    self.dropped.note(message)
                await self._send_side.send(Error(code, message, fatal, client_id))
                return not fatal
            case Hello() | KeyPresented():
                await self._send_side.send(
                    Error("already_authenticated", "the session is already authenticated")
                )
            case EndOfStream():
                await self._send_side.send(FINISH)
                return False
        return True

    async def _store(self, event: SendText) -> None:
        user = self.identity.user or event.user
        assert user is not None, "the papayaChat decoder always names the user"
        try:
            result = await self.room.metrics.append(
                self.room.log,
                user,
                event.text,
                event.client_id,
                action=event.action,
                dialect="papaya" if self.identity.dialect == "papaya" else None,
                verified=self.identity.verified,
            )
        except StorageFailed as exc:
            await self._send_side.send(Error("storage_failed", str(exc), False, event.client_id))
            return
        await self._send_side.send(Ack(event.client_id, result.seq))
