"""A chat session that survives disconnects: reconnect, resume, resend.

Theory of operation. `ChatSession.run` loops over connections. Each connection starts with a
handshake under a deadline (open, `hello`, wait for `welcome`), then two tasks share it: the
reader owns the receive half and the writer owns the send half.

- No gap, no duplicate: the session remembers the highest `seq` it has passed on. A reconnect
  says `since` = that number, so the server replays exactly what was missed, and any message
  with a `seq` at or below it is dropped in case the server repeats one.
- No lost send: every message gets an `id` that is unique to this process (a random prefix and
  a counter) and stays in `pending` until its `ack`. After a reconnect the writer resends all
  of `pending` in order with the same ids; the server stores a known id only once and confirms
  it with the original `seq`.
- Dead connections are noticed by the writer: after `keepalive_interval` seconds without a byte
  from the server (or without sending one: the server drops a client silent for its idle
  timeout) it sends a ping, and it drops the connection when nothing arrives within
  `keepalive_timeout` after it. Between these the session sleeps on trio; it never polls.
- Between connections it waits with exponential backoff and jitter (`Backoff`), reset after each
  welcome. Before the first welcome, any failure is fatal (`ServerUnreachable`) when
  `fail_fast` is set: a typo in the host or port should fail at once, not retry forever.
- A wrong key, user name or token (`bad_key`, `bad_user`, `bad_token`) can never get better:
  `SessionRefused`; so is `name_taken` on the first connection (later the name may still be
  held by our own dropped connection, so a reconnection retries).
- Presence, typing hints and history pages are passed on as they come. History and typing
  requests (`request_history`, `send_typing`) go out only on a live connection and are not
  resent: the frontend asks again.

What the session sees is reported as `SessionEvent`s on a bounded channel; when the frontend is
slow the reader waits, and the server, not this process, decides when we are too far behind.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn

import trio

from papaya_clients.terminal.config import ClientConfig
from papaya_clients.terminal.transport import Connector, MessageConnection, TransportError
from papaya_trio.protocol import client as protocol
from papaya_trio.protocol.client import (
    Ack,
    ChatMessage,
    History,
    Member,
    Pong,
    Presence,
    RemoteProtocolError,
    ServerError,
    Typing,
    Welcome,
)

#: Error codes after which retrying with the same settings cannot succeed.
REFUSAL_CODES = frozenset({"bad_key", "bad_user", "bad_token"})
#: Refused only before the first welcome: after a drop, the server may still hold our own old
#: connection under the name for a moment, so a reconnection retries instead.
FIRST_REFUSAL_CODES = frozenset({"name_taken"})
#: Requests other than sends (history, typing) waiting for the writer; they are not resent
#: after a reconnection, so the frontend simply asks again.
MAX_REQUESTS = 8


class SessionFailed(Exception):
    """The session cannot go on: retrying with the same settings would not help."""


class SessionRefused(SessionFailed):
    """The server refused this client for good (wrong key, bad user name)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})" if message else code)
        self.code = code


class ServerUnreachable(SessionFailed):
    """The first connection failed, and the session was told to fail fast."""


class _ConnectionLost(Exception):
    """This connection is over; the message says why."""


@dataclass(frozen=True, slots=True)
class Connected:
    """A connection is up (after `welcome`): the room's newest and oldest sequence numbers,
    and who is online."""

    server: str
    head: int
    first: int = 0
    online: tuple[Member, ...] = ()
    #: Whether our own name is verified by a personal token.
    verified: bool = False


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection is gone; the next attempt starts in `retry_in` seconds. `attempt` counts
    the failures since the last welcome: 1 when a live connection was lost."""

    reason: str
    retry_in: float
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class Confirmed:
    """The message with `id` was stored as `seq`."""

    id: str
    seq: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """The server refused the message with `id`; it will not be resent."""

    id: str
    text: str
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class Notice:
    """A non-fatal server error that is not about one message."""

    text: str


SessionEvent = (
    Connected
    | Disconnected
    | ChatMessage
    | Confirmed
    | Rejected
    | Notice
    | Presence
    | Typing
    | History
)


class Backoff:
    """Exponential delays with jitter between reconnect attempts."""

    def __init__(self, rng: random.Random, *, initial: float = 0.5, maximum: float = 30.0) -> None:
        self._rng = rng
        self._initial = initial
        self._maximum = maximum
        self._failures = 0

    def __repr__(self) -> str:
        return f"<Backoff failures={self._failures}>"

    def next_delay(self) -> float:
        """Return the delay before the next attempt and count one more failure."""
        ceiling = min(self._maximum, self._initial * 2.0 ** min(self._failures, 32))
        self._failures += 1
        # Between half and all of the ceiling, so clients dropped together do not return together.
        return ceiling * (0.5 + self._rng.random() / 2)

    def reset(self) -> None:
        """Start again from the initial delay (after a successful connection)."""
        self._failures = 0


class ChatSession:
    """A client's view of the room across reconnects; see the module docstring."""

    def __init__(
        self,
        *,
        connect: Connector,
        key: str | None,
        user: str,
        events: trio.MemorySendChannel[SessionEvent],
        rng: random.Random,
        fail_fast: bool = True,
        max_pending: int = 1000,
        connect_timeout: float = 10.0,
        keepalive_interval: float = 30.0,
        keepalive_timeout: float = 10.0,
        backoff: Backoff | None = None,
        token: str | None = None,
    ) -> None:
        self._connect = connect
        self._key = key
        self._token = token
        self.user = user
        self._events = events
        self._fail_fast = fail_fast
        self._max_pending = max_pending
        self._connect_timeout = connect_timeout
        self._keepalive_interval = keepalive_interval
        self._keepalive_timeout = keepalive_timeout
        self._backoff = backoff if backoff is not None else Backoff(rng)
        self._id_prefix = f"{rng.getrandbits(48):012x}"
        self._next_id = 0
        #: The highest sequence number passed on; None before the first welcome.
        self.last_seq: int | None = None
        #: Unconfirmed messages by id, oldest first: (text, action).
        self._pending: OrderedDict[str, tuple[str, bool]] = OrderedDict()
        #: History and typing requests for the current connection.
        self._requests: deque[dict[str, object]] = deque()
        #: Ids of pending messages not yet written on the current connection.
        self._unsent: deque[str] = deque()
        self._wake_writer = trio.Event()
        self._all_confirmed = trio.Event()
        self._all_confirmed.set()
        self._room = trio.Event()
        self._room.set()
        self._last_received = 0.0
        self._welcomed = trio.Event()
        self.connected = False
        #: How many sends the server refused.
        self.rejected = 0

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return (
            f"<ChatSession {self.user} {state} last_seq={self.last_seq}"
            f" pending={len(self._pending)}>"
        )

    @property
    def pending_count(self) -> int:
        """How many sent messages are not confirmed yet."""
        return len(self._pending)

    def send_nowait(self, text: str, *, action: bool = False) -> str:
        """Queue one message (or a /me action with `action`) and return its id.

        Raises `trio.WouldBlock` when `max_pending` messages are unconfirmed, and
        `LocalProtocolError` when the text can never fit in one protocol line.
        """
        if len(self._pending) >= self._max_pending:
            raise trio.WouldBlock
        self._next_id += 1
        message_id = f"{self._id_prefix}-{self._next_id}"
        protocol.encode(protocol.send(text, message_id, action=action))
        self._pending[message_id] = (text, action)
        self._unsent.append(message_id)
        self._all_confirmed = _cleared(self._all_confirmed)
        if len(self._pending) >= self._max_pending:
            self._room = _cleared(self._room)
        self._wake_writer.set()
        return message_id

    async def send(self, text: str, *, action: bool = False) -> str:
        """Queue one message, waiting while too many are unconfirmed; return its id."""
        while True:
            try:
                return self.send_nowait(text, action=action)
            except trio.WouldBlock:
                await self._room.wait()

    def request_history(self, before: int, limit: int, request_id: str) -> bool:
        """Ask for older messages; False (nothing sent) when offline or too many are queued."""
        return self._request(protocol.history(before, limit, request_id))

    def send_typing(self) -> bool:
        """Send a typing hint; False (nothing sent) when offline or too many are queued."""
        return self._request(protocol.typing())

    def _request(self, obj: dict[str, object]) -> bool:
        if not self.connected or len(self._requests) >= MAX_REQUESTS:
            return False
        self._requests.append(obj)
        self._wake_writer.set()
        return True

    async def wait_connected(self) -> None:
        """Block until the server has welcomed this session once."""
        await self._welcomed.wait()

    async def wait_all_confirmed(self) -> None:
        """Block until every queued message is confirmed or rejected."""
        await self._all_confirmed.wait()

    async def run(self) -> NoReturn:
        """Connect, and reconnect after every loss, until cancelled.

        Raises `SessionRefused` when the server refuses the key or user name, and
        `ServerUnreachable` when the first connection fails with `fail_fast`.
        """
        attempt = 0
        while True:
            try:
                reason = await self._run_connection()
            except (TransportError, RemoteProtocolError, _ConnectionLost) as exc:
                reason = str(exc)
            attempt = 1 if self.connected else attempt + 1
            self.connected = False
            self._requests.clear()
            if self.last_seq is None and self._fail_fast:
                raise ServerUnreachable(reason)
            delay = self._backoff.next_delay()
            await self._events.send(Disconnected(reason, delay, attempt))
            await trio.sleep(delay)

    async def _run_connection(self) -> str:
        """Run one connection to its end and return why it ended."""
        handshake = trio.CancelScope(deadline=trio.current_time() + self._connect_timeout)
        with handshake:
            async with self._connect() as conn:
                await self._handshake(conn)
                handshake.deadline = math.inf
                return await self._serve(conn)
        raise TransportError(f"no welcome from the server within {self._connect_timeout:g} s")

    async def _handshake(self, conn: MessageConnection) -> None:
        await conn.send_object(
            protocol.hello(self._key, self.user, self.last_seq, token=self._token)
        )
        obj = await conn.receive_object()
        if obj is None:
            raise _ConnectionLost("server closed the connection before the welcome")
        event = protocol.parse_event(obj)
        if isinstance(event, ServerError):
            if event.code in FIRST_REFUSAL_CODES and self.last_seq is None:
                raise SessionRefused(event.code, event.message)
            self._raise_for(event)
        if not isinstance(event, Welcome):
            raise RemoteProtocolError(f"server answered hello with {obj.get('type')!r}")
        self.connected = True
        self._welcomed.set()
        if self.last_seq is None:
            self.last_seq = 0
        self._backoff.reset()
        self._last_received = trio.current_time()
        self._unsent = deque(self._pending)
        await self._events.send(
            Connected(event.server, event.head, event.first, event.online, event.verified)
        )

    async def _serve(self, conn: MessageConnection) -> str:
        """Run the reader and the writer until one of them ends the connection."""
        reason = "connection closed"
        refusal: SessionRefused | None = None

        async with trio.open_nursery() as nursery:

            async def guard(loop: Callable[[MessageConnection], Awaitable[None]]) -> None:
                nonlocal reason, refusal
                try:
                    await loop(conn)
                except (TransportError, RemoteProtocolError, _ConnectionLost) as exc:
                    reason = str(exc)
                except SessionRefused as exc:
                    refusal = exc
                nursery.cancel_scope.cancel()

            nursery.start_soon(guard, self._read_loop)
            nursery.start_soon(guard, self._write_loop)
        if refusal is not None:
            raise refusal
        return reason

    async def _read_loop(self, conn: MessageConnection) -> None:
        while (obj := await conn.receive_object()) is not None:
            self._last_received = trio.current_time()
            event = protocol.parse_event(obj)
            if isinstance(event, ChatMessage):
                assert self.last_seq is not None  # set by the handshake
                if event.seq <= self.last_seq:
                    continue
                self.last_seq = event.seq
                await self._events.send(event)
            elif isinstance(event, Ack):
                if event.id is not None and self._forget(event.id) is not None:
                    await self._events.send(Confirmed(event.id, event.seq))
            elif isinstance(event, ServerError):
                await self._on_error(event)
            elif isinstance(event, Presence | Typing | History):
                await self._events.send(event)
            elif isinstance(event, Pong | Welcome | None):
                # A pong only proves the link is alive; a repeated welcome or an unknown type
                # carries nothing for us.
                pass
        raise _ConnectionLost("server closed the connection")

    async def _on_error(self, error: ServerError) -> None:
        if error.fatal:
            self._raise_for(error)
        if error.id is not None and (pending := self._forget(error.id)) is not None:
            self.rejected += 1
            await self._events.send(Rejected(error.id, pending[0], error.code, error.message))
        else:
            await self._events.send(Notice(f"server: {error.message} ({error.code})"))

    def _raise_for(self, error: ServerError) -> NoReturn:
        if error.code in REFUSAL_CODES:
            raise SessionRefused(error.code, error.message)
        raise _ConnectionLost(f"server: {error.message} ({error.code})")

    def _forget(self, message_id: str) -> tuple[str, bool] | None:
        """Drop a message from `pending` once it is confirmed or refused; return it."""
        pending = self._pending.pop(message_id, None)
        if pending is None:
            return None
        if not self._pending:
            self._all_confirmed.set()
        self._room.set()
        return pending

    async def _write_loop(self, conn: MessageConnection) -> None:
        ping_sent_at: float | None = None
        pings = 0
        last_sent = trio.current_time()
        while True:
            # Cleared before the queue is drained, so a send queued meanwhile is not missed.
            self._wake_writer = _cleared(self._wake_writer)
            while self._unsent:
                message_id = self._unsent.popleft()
                pending = self._pending.get(message_id)
                if pending is not None:  # not refused or confirmed meanwhile
                    text, action = pending
                    await conn.send_object(protocol.send(text, message_id, action=action))
                    last_sent = trio.current_time()
            while self._requests:
                await conn.send_object(self._requests.popleft())
                last_sent = trio.current_time()
            now = trio.current_time()
            if ping_sent_at is not None and self._last_received >= ping_sent_at:
                ping_sent_at = None
            if ping_sent_at is None:
                # Quiet either way: the server drops a client that sends nothing for its
                # idle timeout, even in a busy room where we receive all the time.
                quiet_since = min(self._last_received, last_sent)
                deadline = quiet_since + self._keepalive_interval
                if now >= deadline:
                    pings += 1
                    await conn.send_object(protocol.ping(f"p-{pings}"))
                    ping_sent_at = last_sent = now
            if ping_sent_at is not None:
                deadline = ping_sent_at + self._keepalive_timeout
                if now >= deadline:
                    raise _ConnectionLost(
                        f"no answer to a ping within {self._keepalive_timeout:g} s"
                    )
            with trio.move_on_at(deadline):
                await self._wake_writer.wait()


def _cleared(event: trio.Event) -> trio.Event:
    """Return `event` if it is not set yet, or a fresh unset one (trio events cannot reset)."""
    return trio.Event() if event.is_set() else event


#: Session events waiting for the front end (the plain printer or the full-screen view).
EVENT_BUFFER = 256


def open_session(
    config: ClientConfig, connect: Connector, rng: random.Random
) -> tuple[
    ChatSession, trio.MemorySendChannel[SessionEvent], trio.MemoryReceiveChannel[SessionEvent]
]:
    """The session `config` describes, and both ends of the channel its events arrive on (the
    caller closes the sending end once the session has ended)."""
    send_events, receive_events = trio.open_memory_channel[SessionEvent](EVENT_BUFFER)
    session = ChatSession(
        connect=connect,
        key=config.key,
        user=config.user,
        events=send_events,
        rng=rng,
        token=config.token,
    )
    return session, send_events, receive_events
