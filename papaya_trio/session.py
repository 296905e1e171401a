"""A client session: one nursery, one recv task, one send task.

Theory of operation
-------------------
The recv task reads client events, stores messages in the log and queues replies (acks,
errors, pongs) in the session's outbox, a bounded memory channel. The send task is the only
writer to the client: it writes the welcome, then loops "write every visible log record after
my cursor, then take one item from the outbox". The broadcaster puts WAKE tokens in the same
outbox, so new messages, history and replies all leave through one task, in log order.

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
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from papaya_trio import SERVER_NAME
from papaya_trio.broadcaster import Subscription
from papaya_trio.bucket import TokenBucket
from papaya_trio.chatlog import StorageFailed
from papaya_trio.peer import Peer, PeerGone
from papaya_trio.protocol.events import (
    Ack,
    ClientEvent,
    EndOfStream,
    Error,
    Hello,
    KeyPresented,
    Message,
    Ping,
    Pong,
    SendText,
    ServerEvent,
    Violation,
    Welcome,
)
from papaya_trio.protocol.papaya import HISTORY_LINES, history_tail

if TYPE_CHECKING:
    from papaya_trio.room import Room

logger = logging.getLogger(__name__)

OUTBOX_ITEMS = 64
SEND_BATCH = 64


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
    """Who is connected: `user` is None for papayaChat clients, who name themselves per line."""

    user: str | None
    history: HistoryRequest


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

    def _on_lagging(self) -> None:
        self.room.metrics.evicted_for_lag()
        self._end("lagging")
        self.close("lagging", f"you fell more than {self.room.settings.max_lag} messages behind")
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
        with (
            self.room.joined(self),
            self.room.broadcaster.subscribe(self._send_side, head, self._on_lagging) as sub,
        ):
            self._subscription = sub
            sub.cursor = self._start_cursor(head)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._paired, nursery.cancel_scope, self._recv_task)
                nursery.start_soon(self._paired, nursery.cancel_scope, self._send_task, sub, head)
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
    async def _send_task(self, sub: Subscription, welcome_head: int) -> None:
        with self._send_scope:
            await self._send_loop(sub, welcome_head)
        if self._send_scope.cancelled_caught:
            raise PeerGone("write abandoned: the client stopped reading")

    async def _send_loop(self, sub: Subscription, welcome_head: int) -> None:
        user = self.identity.user or ""
        await self._write([Welcome(SERVER_NAME, user, welcome_head)])
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
            item = await self._outbox.receive()
            if item is FINISH:
                self._end("client closed")
                return
            if isinstance(item, Error | Ack | Pong):
                await self._write([item])
                if isinstance(item, Error) and item.fatal:
                    self._end(item.code)
                    return

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
            case Ping(ping_id=ping_id):
                await self._send_side.send(Pong(ping_id))
            case Violation(code=code, message=message, fatal=fatal, client_id=client_id):
                if self.identity.user is None:
                    logger.info("%s: dropped a line: %s", self.peer.label, message)
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
                self.room.log, user, event.text, event.client_id
            )
        except StorageFailed as exc:
            await self._send_side.send(Error("storage_failed", str(exc), False, event.client_id))
            return
        await self._send_side.send(Ack(event.client_id, result.seq))
