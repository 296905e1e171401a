"""Simulated clients: the native and papayaChat connections, and the actors that drive them.

A client object (`NativeClient`, `PapayaClient`) knows the protocol and checks, as the bytes
arrive, that its own stream keeps the invariants (through the oracle). An actor is the policy
on top: how often it talks, how it leaves (clean close, reset, half-close, EOF mid-line), how
it reads (promptly or slowly). Native and WebSocket connections keep a member list, and
chatters and lurkers page back through history now and then (`sim.presence` checks both). In
a profile with rushes (`Profile.burst_every`) every native chatter sends a burst at the same
moments (WebSocket chatters do not: see `WsClient.rushes`).
Actors run until the world asks them to leave; once faults stop (`world.settling`) they stop
misbehaving and report whether they have reached the log's head.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from papaya_trio.protocol.rules import KEY_CHARS
from papaya_trio.session import SEND_BATCH
from sim.invariants import (
    ADMITTED,
    ANNOUNCED,
    IDLE_DROPPED,
    PROMPT_KEPT,
    REPLIES,
    SLOW_BOUND,
    TOLD_WHY,
    NativeView,
    PapayaView,
    papaya_line,
)
from sim.network import Link
from sim.presence import MemberList, check_page
from sim.wire import FrameReader, FrameTooLong, line, record_from
from sim.world import EPOCH_MS, KEY, World

WINDOW = 8  # messages a chatter has in flight before it waits for acks
MIN_MESSAGE_LINE = 64  # no message line the server writes is shorter
REPLY_WAIT = 10.0  # simulated seconds a client waits for replies it is owed
KICK_BOUND = 3.0  # a client past the lag limit is disconnected within this
LEAVE_STYLES = ("close", "reset", "half_close", "eof_mid_line")
GONE = (trio.BrokenResourceError, trio.ClosedResourceError)
PAGE_CHANCE = 0.03  # chance, at each turn of a chatter or lurker, that it pages back
MAX_PAGES = 40  # history requests in one walk back
ADMIT_MARGIN = 1.0  # a member is welcomed within pressure_auth_timeout and this
IDLE_MARGIN = 1.0  # a silent member is dropped within idle_timeout and this
FLOOD_HOLD = 10.0  # a flood connection gives up waiting to be dropped after this
FLOOD_STYLES = ("brace", "wrong key", "nothing")


@dataclass(slots=True)
class Connection:
    """One connection of a native client."""

    link: Link
    view: NativeView
    reader: FrameReader | None  # None over WebSocket, where trio-websocket reads the frames
    epoch: int
    welcomed: trio.Event = field(default_factory=trio.Event)
    ended: trio.Event = field(default_factory=trio.Event)
    end: str = "open"
    welcomed_at: float = 0.0
    unanswered: set[str] = field(default_factory=set)  # ids sent here without a reply yet
    errors: int = 0
    leaving: bool = False  # the client began to leave (or sent what ends the connection)
    notice_owed: bool = False  # see `NativeClient.expect_notice`
    shutdown_began: bool = False  # a graceful shutdown began while it was open
    members: MemberList | None = None  # set by `NativeClient.hello`
    page: dict[str, object] | None = None  # the last history reply
    paged: trio.Event = field(default_factory=trio.Event)  # set when `page` arrives
    paged_until: float = 0.0  # a history request is out until then (inf) or was answered then
    replayed_at: float = 0.0  # when the replay up to the welcome's head had all arrived
    replay_backlog: int = 0  # the server's head then: what was stored meanwhile queues behind it
    stale_pages: int = 0  # history requests given up on, whose replies are still to come


class NativeClient:
    """A native-dialect client: hello, send with ids, resend after reconnecting."""

    leave_styles = LEAVE_STYLES
    rushes = True  # joins the profile's rushes (`Profile.burst_every`)

    def __init__(self, world: World, user: str, rng: random.Random, *, slow: bool = False) -> None:
        self.world = world
        self.user = user
        self.rng = rng
        self.slow = slow
        self.last_seq: int | None = None  # newest seq seen, across connections
        self.pending: dict[str, str] = {}  # id -> text, sent but not confirmed
        self._texts: dict[str, str] = {}  # id -> text, of everything ever sent
        self._retry: set[str] = set()
        self._count = 0
        self.conn: Connection | None = None
        world.clients.append(self)

    @property
    def settles(self) -> bool:
        """Slow readers and senders of garbage are not expected to catch up."""
        return not self.slow

    async def connect(self, since: int | None, nursery: trio.Nursery) -> Connection | None:
        """Open a connection and say hello; None if the server refused. `nursery` runs what
        the connection needs in the background (nothing, over TCP)."""
        try:
            link = await self.world.network.connect(self.user)
        except OSError:
            return None
        if self.slow:
            reader = FrameReader(link.client, b"\n", chunk=512, pause=self._slow_pause)
        else:
            reader = FrameReader(link.client, b"\n")
        return await self.hello(Connection(link, self.view(link, since), reader, self.epoch), since)

    @property
    def epoch(self) -> int:
        """The server life a connection opened now belongs to."""
        return self.world.oracle.epoch

    def view(self, link: Link, since: int | None) -> NativeView:
        """The oracle's view of what a new connection on `link` must be delivered."""
        world = self.world
        who = f"{self.user}@link{link.number}"
        return NativeView(world.oracle, who, since, world.settings.history)

    async def hello(self, conn: Connection, since: int | None) -> Connection:
        """Make `conn` the current connection and say hello on it."""
        hello: dict[str, object] = {"type": "hello", "key": KEY, "user": self.user}
        if since is not None:
            hello["since"] = since
        self.conn = conn
        conn.members = MemberList(f"{self.user}@link{conn.link.number}", self.world.fail)
        if not await self.send_obj(hello):
            conn.ended.set()
        return conn

    def _slow_pause(self) -> float:
        """A slow reader reads in bursts: short waits, now and then a long one."""
        return self.rng.uniform(1.0, 4.0) if self.rng.random() < 0.05 else self.rng.uniform(0, 0.3)

    async def write(self, data: bytes) -> bool:
        """Write on the current connection; False if it is gone."""
        assert self.conn is not None
        try:
            await self.conn.link.client.send_all(data)
        except GONE:
            return False
        return True

    async def send_obj(self, obj: dict[str, object]) -> bool:
        """Send one JSON object (a line); False if the connection is gone."""
        return await self.write(line(**obj))

    async def send_new(self) -> None:
        """Send a new message with a fresh id."""
        self._count += 1
        client_id = f"{self.user}-{self._count}"
        pad = "x" * self.rng.choice((0, 0, 5, 40, 150))
        accent = self.rng.choice(("", "", "é", "✓ ü"))
        text = f"{self.user} m{self._count} {accent}{pad}".strip()
        self.world.oracle.sent(text, self.user, client_id)
        self.pending[client_id] = self._texts[client_id] = text
        await self._send(client_id)

    async def resend(self) -> None:
        """Send again everything not confirmed (same ids: the server must store each once)."""
        for client_id in list(self.pending):
            await self._send(client_id)

    async def retry_failed(self) -> None:
        """Send again what the server said it could not store."""
        for client_id in sorted(self._retry):
            self._retry.discard(client_id)
            if client_id in self.pending:
                await self._send(client_id)

    async def _send(self, client_id: str) -> None:
        assert self.conn is not None
        self.conn.unanswered.add(client_id)
        await self.send_obj({"type": "send", "text": self.pending[client_id], "id": client_id})

    async def read(self, conn: Connection) -> None:
        """Read and check everything the server says, until the connection ends."""
        assert conn.reader is not None
        try:
            while (frame := await conn.reader.next()) is not None:
                try:
                    obj = json.loads(frame[0])
                except ValueError:
                    self.world.fail(REPLIES, f"{self.user}: a line that is not JSON: {frame[0]!r}")
                    return
                self._dispatch(conn, obj)
            conn.end = "eof" if conn.end == "open" else conn.end
        except GONE:
            conn.end = "reset"
        except FrameTooLong as exc:
            self.world.fail(REPLIES, f"{self.user}: {exc}")
        finally:
            self.connection_ended(conn)

    def _dispatch(self, conn: Connection, obj: dict[str, object]) -> None:
        world = self.world
        kind = obj.get("type")
        if kind == "welcome":
            assert isinstance(obj["head"], int)
            conn.view.welcome(obj["head"])
            assert conn.members is not None
            conn.members.welcome(obj.get("online"))
            conn.welcomed_at = trio.current_time()
            conn.welcomed.set()
        elif kind == "message":
            record = record_from(obj)
            conn.view.message(record)
            self.last_seq = conn.view.last
            if record.seq == conn.view.welcome_head:
                conn.replayed_at = trio.current_time()
                conn.replay_backlog = world.host.head
            self._check_latency(conn, record.seq, record.time_ms)
        elif kind == "ack":
            client_id, seq = obj["id"], obj["seq"]
            assert isinstance(client_id, str) and isinstance(seq, int)
            conn.unanswered.discard(client_id)
            self.pending.pop(client_id, None)
            text = self._texts.get(client_id)
            if text is None:
                world.fail(REPLIES, f"{self.user}: ack for {client_id}, which it never sent")
                return
            # A resend may be confirmed twice (the oracle checks both name one seq).
            world.oracle.ack_seen(self.user, client_id, seq, text, self.user)
        elif kind == "error":
            self._on_error(conn, obj)
        elif kind == "presence":
            assert conn.members is not None
            conn.members.event(obj)
        elif kind == "history":
            if conn.stale_pages:  # replies come in order: this one answers a request given up on
                conn.stale_pages -= 1
                return
            conn.page = obj
            conn.paged_until = trio.current_time()
            conn.paged.set()
        elif kind not in ("pong", "typing"):
            world.fail(REPLIES, f"{self.user}: unexpected {obj}")

    def _on_error(self, conn: Connection, obj: dict[str, object]) -> None:
        code = obj.get("code")
        conn.errors += 1
        if code == "storage_failed" and not obj.get("fatal"):
            client_id = obj.get("id")
            assert isinstance(client_id, str)
            conn.unanswered.discard(client_id)
            self._retry.add(client_id)
        elif code == "idle_timeout":
            # Members ping at least every idle_timeout / 4, unless a stall or a partition
            # held the pings back.
            conn.end = code
            if conn.link.healthy:
                self.world.fail(PROMPT_KEPT, f"{self.user}: idle_timeout, yet it pings")
        elif code == "auth_timeout":
            # A client says hello as soon as it is connected: only a partition or a stall that
            # held the hello back past auth_timeout explains this (partition seed 398).
            conn.end = code
            if conn.link.healthy:
                self.world.fail(REPLIES, f"{self.user}: auth_timeout, yet it said hello at once")
        elif code in ("lagging", "shutdown", "name_taken", "storage_failed"):
            # A fatal storage_failed: the log could not be read (a shared store that is
            # down); the client reconnects with `since` and loses nothing.
            # name_taken: the server has not yet seen this client's previous connection drop;
            # the connection ends and the client reconnects after its backoff.
            conn.end = str(code)
            if code == "lagging":
                self.check_prompt(conn, "dropped as lagging")
        elif not self._garbage_expected(code):
            self.world.fail(REPLIES, f"{self.user}: unexpected error {obj}")

    def _garbage_expected(self, code: object) -> bool:
        return False

    def check_prompt(self, conn: Connection, what: str) -> None:
        """The server dropped `conn` for lagging (`what` says how): in a profile whose links
        carry the load (one with a latency bound), a client that reads promptly on a link
        that no fault touched must never be."""
        world = self.world
        if (
            world.profile.latency_bound is not None
            and not self.slow
            and not conn.leaving
            and conn.link.healthy
            and conn.epoch == world.oracle.epoch
        ):
            world.fail(
                PROMPT_KEPT,
                f"{self.user}@link{conn.link.number} reads promptly on a healthy link, yet was "
                f"{what} (welcomed at {conn.welcomed_at:.3f}s, seen {conn.view.last})",
            )

    def _check_latency(self, conn: Connection, seq: int, time_ms: int) -> None:
        bound = self.world.profile.latency_bound
        head = conn.view.welcome_head
        if bound is None or self.slow or not conn.link.healthy or head is None or seq <= head:
            return
        stored_at = (time_ms - EPOCH_MS) / 1000
        if stored_at < conn.paged_until:
            return  # it waited behind a history page on this connection
        if stored_at < conn.replayed_at:
            # It waited behind the replay of what the client missed, which a slow link that
            # carries the live load may still take seconds to bring (partition seed 46: 34 KB
            # of replay on a 7 KB/s link after a reconnect).
            return
        latency = trio.current_time() - stored_at
        if latency > bound:
            self.world.fail(
                SLOW_BOUND, f"{self.user} got seq {seq} {latency:.3f}s after it was stored"
            )

    def settled(self) -> bool:
        """Connected, nothing unconfirmed, and seen everything up to the server's head."""
        conn = self.conn
        return (
            conn is not None
            and conn.welcomed.is_set()
            and not conn.ended.is_set()
            and not self.pending
            and (conn.view.last or 0) >= self.world.host.head
        )

    def holds(self) -> list[str | None]:
        """See `sim.world.Client.holds`."""
        conn = self.conn
        on = conn is not None and conn.welcomed.is_set() and not conn.ended.is_set()
        return [self.user] if on else []

    def member_counts(self) -> Counter[str | None] | None:
        """See `sim.world.Client.member_counts`."""
        conn = self.conn
        if conn is None or conn.members is None or not self.holds() or not conn.link.healthy:
            return None
        return conn.members.counts

    async def page_back(self, conn: Connection, rng: random.Random) -> None:
        """Walk back through history with `history` requests, from a random point, until the
        start (or MAX_PAGES pages); each page is checked as it comes."""
        before = rng.randint(0, (conn.view.last or 0) + 3)
        for number in range(MAX_PAGES):
            limit = rng.choice((1, 3, 10, 25, 60, 250))
            conn.paged = trio.Event()
            conn.paged_until = math.inf
            request = {"type": "history", "before": before, "limit": limit, "id": f"h-{number}"}
            if not await self.send_obj(request):
                return
            with trio.move_on_after(REPLY_WAIT):
                await conn.paged.wait()
            if not conn.paged.is_set():
                # Given up on (a partition held it, partition seed 149): if its reply still
                # comes, it must not be taken for the reply to a later request.
                conn.stale_pages += 1
            page = conn.page
            intact = conn.epoch == self.world.oracle.epoch and self.world.host.up
            if page is None or not conn.paged.is_set() or conn.ended.is_set() or not intact:
                return
            if not check_page(self.world, self.user, (before, limit), page, conn.view.last or 0):
                return
            messages, first = page["messages"], page["first"]
            assert isinstance(messages, list)
            if not messages or messages[0]["seq"] == first:
                return
            before = messages[0]["seq"]

    def behind(self, head: int, noted_at: float) -> bool | None:
        """See `sim.world.Client.behind`."""
        conn, world = self.conn, self.world
        if (
            conn is None
            or self.slow
            or not conn.welcomed.is_set()
            or conn.welcomed_at > noted_at
            or conn.paged_until > noted_at  # a history page shares the link meanwhile
            or (conn.view.last or 0) < (conn.view.welcome_head or 0)
            # Still bringing what was stored during its replay, which has no latency bound
            # either (`_check_latency`): on a slow link that carries the live load it may take
            # seconds (partition seed 358: 41 messages behind a 116-message replay, 5.6 KB/s).
            or (conn.view.last or 0) < conn.replay_backlog
            # Still receiving: bytes are on their way to it (a lost wake-up leaves the link
            # idle). A link slower than the load, as swarm may draw, can be seconds behind
            # after a burst (swarm seed 571: 15 KB in 1.3 s at 5 KB/s).
            or conn.link.down.carrying
            or conn.ended.is_set()
            or not conn.link.healthy
            or conn.epoch != world.oracle.epoch
            or not world.host.up
        ):
            return None
        return (conn.view.last or 0) < head

    def expect_notice(self, head: int) -> None:
        """See `sim.world.Client.expect_notice`."""
        conn = self.conn
        if conn is None:
            return
        conn.shutdown_began = True
        conn.notice_owed = (
            not self.slow
            and conn.welcomed.is_set()
            and not conn.ended.is_set()
            and not conn.leaving
            and conn.link.healthy
            and (conn.view.last or 0) >= head
            # A history reply still owed goes first and shares the link: on a slow one it may
            # outlast the shutdown deadline (shutdown seed 39: a lurker's page of 60 on a
            # 5.9 KB/s link), and the server then drops the connection untold, as documented.
            and conn.paged_until != math.inf
        )

    def connection_ended(self, conn: Connection) -> None:
        """The connection has ended (`conn.end` says how): trace it and check the notice (if
        it was owed the shutdown notice and neither the client nor a fault ended it, it must
        have got the notice)."""
        self.world.trace.record("closed", who=self.user, link=conn.link.number, end=conn.end)
        conn.ended.set()
        if conn.end == "eof" and conn.reader is not None and conn.welcomed.is_set():
            self._check_told(conn)
        # Still "open": the client stopped reading (it hung up), the server did not end it.
        # "storage_failed": the server told it why it closed first (a shared store down).
        ended = ("shutdown", "open", "storage_failed")
        if not conn.notice_owed or conn.end in ended or conn.leaving:
            return
        if conn.link.healthy and not conn.link.up.broken:
            self.world.fail(
                ANNOUNCED, f"{self.user}: connection ended ({conn.end}) without the shutdown notice"
            )

    def _check_told(self, conn: Connection) -> None:
        """The server ended a TCP connection it had welcomed, and no fatal error said why:
        only the client's own leaving or a write cut off mid-way (a client dropped while a
        write to it was stuck, so nothing more could follow) excuses that. (A connection
        refused at accept is closed before anything is read, by design: not covered.)"""
        if conn.leaving:
            return
        if not conn.link.down.writer_gave_up:
            self.world.fail(
                TOLD_WHY,
                f"{self.user}@link{conn.link.number}: the server closed the connection without "
                "a fatal error saying why",
            )
        elif not conn.shutdown_began:
            self.check_prompt(conn, "dropped mid-write")

    async def leave(self, conn: Connection, style: str) -> None:
        """End the connection in one of LEAVE_STYLES."""
        world, stream = self.world, conn.link.client
        conn.leaving = True
        world.trace.record("leave", who=self.user, style=style, link=conn.link.number)
        if style == "reset":
            conn.link.reset()
        elif style == "eof_mid_line":
            await self.write(b'{"type":"send","text":"never fini')
            await stream.aclose()
        elif style == "half_close":
            owed = set(conn.unanswered)
            try:
                await stream.send_eof()
            except GONE:
                return
            with trio.move_on_after(REPLY_WAIT):
                await conn.ended.wait()
            self._check_owed(conn, owed)
            await stream.aclose()
        else:
            await stream.aclose()

    async def hang_up(self, conn: Connection) -> None:
        """After the connection's tasks are gone: close this end, as a process exit does."""
        conn.link.client.close_now()

    def _check_owed(self, conn: Connection, owed: set[str]) -> None:
        """After a half-close the server must answer everything sent before it."""
        still = owed & conn.unanswered
        intact = conn.link.healthy and conn.epoch == self.world.oracle.epoch
        if still and conn.end == "eof" and intact:
            self.world.fail(REPLIES, f"{self.user} half-closed; no reply for {sorted(still)}")


class GarbageClient(NativeClient):
    """Sends malformed and oversize input; expects one non-fatal error for each line."""

    @property
    def settles(self) -> bool:
        return False

    def _garbage_expected(self, code: object) -> bool:
        return code in (
            "bad_json",
            "bad_utf8",
            "unknown_type",
            "bad_field",
            "message_too_long",
            "bad_text",
            "already_authenticated",
            "line_too_long",
        )

    def bad_texts(self) -> tuple[str, str]:
        """Two fresh texts the server must refuse to store: one too long, one with a control
        character (the oracle is told)."""
        limit = self.world.settings.max_message_bytes
        self._count += 1
        too_long = f"{self.user} long{self._count} " + "y" * limit
        control = f"{self.user} ctl{self._count} \x07"
        self.world.oracle.sent(too_long, self.user, None, storable=False)
        self.world.oracle.sent(control, self.user, None, storable=False)
        return too_long, control

    async def send_garbage(self) -> None:
        """Send one bad line; the server must say what is wrong with it."""
        too_long, control = self.bad_texts()
        data = self.rng.choice(
            (
                b"not json\n",
                b"[1, 2]\n",
                b'{"type": "shout"}\n',
                b'{"type": "send"}\n',
                b'{"type": "send", "text": "\xff\xfe"}\n',
                line(type="send", text=too_long),
                line(type="send", text=control),
                line(type="hello", key=KEY, user=self.user),
            )
        )
        await self.write(data)

    async def send_oversize(self, conn: Connection, sent: int) -> None:
        """A line past max_line_bytes (after `sent` bad lines): the server must say so, then
        close."""
        conn.leaving = True  # the connection ends for this line, shutdown or not
        await self.write(b"z" * (self.world.settings.max_line_bytes + 1))


class SilentClient(NativeClient):
    """Says hello, reads, and sends nothing more: the server must drop it with the
    `idle_timeout` error."""

    @property
    def settles(self) -> bool:
        return False

    def _on_error(self, conn: Connection, obj: dict[str, object]) -> None:
        if obj.get("code") == "idle_timeout":
            conn.errors += 1
            conn.end = "idle_timeout"
        else:
            super()._on_error(conn, obj)


class PapayaClient:
    """A papayaChat-dialect client: key first, then `user: text` lines; NUL-ended live lines."""

    def __init__(self, world: World, user: str, rng: random.Random) -> None:
        self.world = world
        self.user = user
        self.rng = rng
        self._count = 0
        self.link: Link | None = None
        self.view: PapayaView | None = None
        self.ended = trio.Event()
        world.clients.append(self)

    @property
    def settles(self) -> bool:
        """A papayaChat client must catch up like any other."""
        return True

    async def connect(self) -> bool:
        """Connect and present the key; False if refused."""
        try:
            self.link = await self.world.network.connect(self.user)
        except OSError:
            return False
        self.view = self.world.oracle.papaya_view(f"{self.user}@link{self.link.number}")
        self.ended = trio.Event()
        key = KEY.encode()
        assert len(key) == KEY_CHARS
        cut = self.rng.randint(0, KEY_CHARS)
        return await self.write(key[:cut]) and await self.write(key[cut:])

    async def write(self, data: bytes) -> bool:
        """Write; False if the connection is gone."""
        assert self.link is not None
        try:
            await self.link.client.send_all(data)
        except GONE:
            return False
        return True

    async def send_new(self) -> None:
        """One `user: text` line (sometimes one the server must drop)."""
        self._count += 1
        text = f"{self.user} p{self._count}"
        if self.rng.random() < 0.1:
            self.world.oracle.sent(text + " \x01", self.user, None, storable=False)
            await self.write(f"{self.user}: {text} \x01\n".encode())
        else:
            self.world.oracle.sent(text, self.user, None)
            await self.write(f"{self.user}: {text}\n".encode())

    async def read(self) -> None:
        """Collect history and live lines until the end. Like the original daemon, the server
        joins the live lines pending at a wake-up with newlines and ends them with one NUL, so
        the lines before the first NUL are the history followed by the first burst's; the
        oracle tells them apart."""
        assert self.link is not None and self.view is not None
        reader = FrameReader(self.link.client, b"\n\x00")
        try:
            while (frame := await reader.next()) is not None:
                text = frame[0].decode()
                if frame[1] == ord("\n") and not self.view.live:
                    self.view.history.append(text)
                else:
                    self.view.live.append(text)
        except GONE:
            pass
        finally:
            self.world.trace.record("closed", who=self.user, link=self.link.number)
            self.ended.set()

    def behind(self, head: int, noted_at: float) -> bool | None:
        """papayaChat lines carry no sequence numbers: only the settling phase checks them."""
        return None

    def expect_notice(self, head: int) -> None:
        """The papayaChat dialect has no way to say why a connection ends."""

    def holds(self) -> list[str | None]:
        """A papayaChat connection is counted under no name (None)."""
        return [None] if self.link is not None and not self.ended.is_set() else []

    def member_counts(self) -> Counter[str | None] | None:
        """The papayaChat dialect has no presence."""
        return None

    def settled(self) -> bool:
        """Connected, and the newest line seen is the log's newest message."""
        world = self.world
        if self.link is None or self.view is None or self.ended.is_set() or not world.host.up:
            return False
        head = world.host.head
        logged = world.logged()
        if not head or head > len(logged):
            return not head
        seen = self.view.history + self.view.live
        return bool(seen) and seen[-1] == papaya_line(logged[head - 1])


# --- actors -----------------------------------------------------------------------------------
async def backoff(rng: random.Random) -> None:
    """Wait a little before trying to connect again."""
    await trio.sleep(rng.uniform(0.05, 1.0))


def _lifetime(world: World, rng: random.Random) -> float:
    every = world.profile.reconnect_every
    if not every or world.settling.is_set():
        return math.inf
    return trio.current_time() + rng.expovariate(1.0 / every)


async def _one_connection(
    client: NativeClient,
    since: int | None,
    body: Callable[[Connection], Awaitable[None]],
) -> Connection | None:
    """One connection's life: connect, read in the background while `body` runs, hang up.

    Returns the connection, or None if it could not be opened.
    """
    async with trio.open_nursery() as nursery:
        conn = await client.connect(since, nursery)
        if conn is not None:
            nursery.start_soon(client.read, conn)
            await body(conn)
        nursery.cancel_scope.cancel()
    if conn is not None:
        await client.hang_up(conn)
    return conn


async def native_actor(client: NativeClient, talks: bool) -> None:
    """A chatter (`talks`) or a lurker: stays connected, reconnects with `since`."""
    world, rng = client.world, client.rng
    while not world.finishing.is_set():
        since = client.last_seq if rng.random() < 0.8 else None
        await _one_connection(client, since, lambda conn: _talk(client, conn, talks))
        if not world.finishing.is_set():
            await backoff(rng)


async def _talk(client: NativeClient, conn: Connection, talks: bool) -> None:
    world, rng, profile = client.world, client.rng, client.world.profile
    leave_at = _lifetime(world, rng)
    pager = world.rng(f"pager:{client.user}:{conn.link.number}")
    if profile.flooders:
        await _check_admitted(client, conn)
    resent = False
    bursting = talks and profile.burst_every and client.rushes
    rushes = Rushes(world, f"{client.user}:{conn.link.number}") if bursting else None
    while not conn.ended.is_set():
        if world.finishing.is_set():
            await client.leave(conn, "close")
            return
        if trio.current_time() >= leave_at and not world.settling.is_set():
            await client.leave(conn, rng.choice(client.leave_styles))
            return
        if conn.welcomed.is_set():
            if not resent:
                resent = True
                await client.resend()
            await client.retry_failed()
            if pager.random() < PAGE_CHANCE and not world.finishing.is_set():
                await client.page_back(conn, pager)
            idle = world.settling.is_set() or world.quiet > 0
            burst = rushes.due() if rushes is not None else 0  # a rush in a quiet window: none
            if burst and not idle:
                await _burst(client, conn, burst)
            elif talks and not idle and len(client.pending) < WINDOW:
                await client.send_new()
            elif profile.keepalive:
                await client.send_obj({"type": "ping", "id": f"{client.user}-ping"})
        pause = rng.expovariate(1.0 / (profile.send_every if talks else 0.5))
        if profile.keepalive:
            pause = min(pause, profile.idle_timeout / 4)
        with trio.move_on_after(pause):
            await conn.ended.wait()


class Rushes:
    """When a chatter's connection sends a burst (`Profile.burst_every`, `burst_size`).

    The moments, `burst_every` apart give or take a half, are one stream of the seed, the
    same for every chatter and connection, so the bursts come together, as when a room
    answers one event; each connection draws its own sizes.
    """

    def __init__(self, world: World, who: str) -> None:
        self._times = world.rng("rushes")
        self._sizes = world.rng(f"burst-sizes:{who}")
        self._every = world.profile.burst_every
        self._span = world.profile.burst_size
        self._at = 0.0
        self._move_on()

    def _move_on(self) -> None:
        """Skip to the first moment after now."""
        now = trio.current_time()
        while self._at <= now:
            self._at += self._every * self._times.uniform(0.5, 1.5)

    def due(self) -> int:
        """How many messages to send in a burst now (0: no rush has come since the last)."""
        if trio.current_time() < self._at:
            return 0
        self._move_on()
        return self._sizes.randint(*self._span)


async def _burst(client: NativeClient, conn: Connection, count: int) -> None:
    """Send `count` new messages back to back, past WINDOW (a paste of many lines), while the
    connection lasts and the world does not go quiet."""
    world = client.world
    for _ in range(count):
        if conn.ended.is_set() or world.quiet > 0 or world.settling.is_set():
            return
        await client.send_new()


async def _check_admitted(client: NativeClient, conn: Connection) -> None:
    """Under a flood, a member is welcomed within pressure_auth_timeout (+ a margin) of
    connecting, and the flood never drops it (admission's documented promises)."""
    world = client.world
    bound = world.profile.pressure_auth_timeout + ADMIT_MARGIN
    with trio.move_on_after(bound):
        await conn.welcomed.wait()
    intact = conn.link.healthy and conn.epoch == world.oracle.epoch and world.host.up
    # name_taken answers the hello (admitted, and refused for another reason): the server
    # had not yet seen this member's previous connection end (flood seed 456: it was still
    # writing to it on a 5.6 KB/s link after the member reset it mid-line).
    if not conn.welcomed.is_set() and intact and conn.end != "name_taken":
        world.fail(
            ADMITTED,
            f"{client.user}@link{conn.link.number}: no welcome within {bound:g}s of connecting"
            f" (connection {'ended: ' + conn.end if conn.ended.is_set() else 'open'})",
        )


async def slow_actor(client: NativeClient) -> None:
    """Reads slowly; once it is too far behind the server must drop it."""
    await _until_settling(client, _watch_lag)


async def _until_settling(
    client: NativeClient, body: Callable[[NativeClient, Connection], Awaitable[None]]
) -> None:
    """Connect (without `since`) and run `body`, again and again until faults stop."""
    world, rng = client.world, client.rng
    while not world.settling.is_set():
        await _one_connection(client, None, lambda conn: body(client, conn))
        await backoff(rng)


async def _watch_lag(client: NativeClient, conn: Connection) -> None:
    world = client.world
    in_flight = conn.link.down.capacity + 512  # bytes the server wrote that we have not read
    margin = in_flight // MIN_MESSAGE_LINE + SEND_BATCH + 1
    over_since: float | None = None
    while not conn.ended.is_set() and not world.settling.is_set():
        last = conn.view.last
        behind = world.host.head - last if last is not None else 0
        now = trio.current_time()
        if behind <= world.settings.max_lag + margin or conn.link.server.closed:
            over_since = None
        elif over_since is None:
            over_since = now
        elif now - over_since > KICK_BOUND and conn.epoch == world.oracle.epoch:
            world.fail(SLOW_BOUND, f"{client.user} is {behind} behind and still connected")
            return
        with trio.move_on_after(0.25):
            await conn.ended.wait()


async def wait_replies(conn: Connection, count: int) -> None:
    """Wait (up to REPLY_WAIT) until `conn` has had `count` error replies or has ended."""
    with trio.move_on_after(REPLY_WAIT):
        # Polled (in simulated time) rather than adding an event per count.
        while conn.errors < count and not conn.ended.is_set():  # noqa: ASYNC110
            await trio.sleep(0.05)


async def garbage_actor(client: GarbageClient) -> None:
    """Sends bad lines or frames, then sometimes an oversize one; checks the server answers
    each."""
    world, rng = client.world, client.rng
    while not world.settling.is_set():
        conn = await _one_connection(client, None, lambda c: _send_bad_input(client, c))
        if conn is None:
            await backoff(rng)
        else:
            await trio.sleep(rng.uniform(0.5, 5.0))


async def _send_bad_input(client: GarbageClient, conn: Connection) -> None:
    world, rng = client.world, client.rng
    with trio.move_on_after(REPLY_WAIT):
        await conn.welcomed.wait()
    sent = rng.randint(1, 5)
    for _ in range(sent):
        await client.send_garbage()
    oversize = rng.random() < 0.3
    if oversize:
        await client.send_oversize(conn, sent)
    await wait_replies(conn, sent + oversize)
    intact = conn.link.healthy and conn.epoch == world.oracle.epoch
    # A connection more than max_lag behind is dropped for lagging, over TCP maybe mid-write,
    # before the error (or the replies) can reach it.
    lagged = world.host.head - (conn.view.last or 0) > world.settings.max_lag
    if conn.errors < sent + oversize and conn.end in ("open", "eof") and intact and not lagged:
        world.fail(REPLIES, f"{client.user}: {conn.errors} replies to {sent + oversize} bad lines")


async def papaya_actor(client: PapayaClient) -> None:
    """A papayaChat client: talks now and then, reconnects now and then."""
    world, rng = client.world, client.rng
    while not world.finishing.is_set():
        if not await client.connect():
            await backoff(rng)
            continue
        assert client.link is not None
        leave_at = _lifetime(world, rng)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.read)
            while not client.ended.is_set() and not world.finishing.is_set():
                if trio.current_time() >= leave_at and not world.settling.is_set():
                    break
                if not world.settling.is_set() and not world.quiet:
                    await client.send_new()
                with trio.move_on_after(rng.expovariate(1.0 / (2 * world.profile.send_every))):
                    await client.ended.wait()
            nursery.cancel_scope.cancel()
        client.link.client.close_now()
        if not world.finishing.is_set():
            await backoff(rng)


async def silent_actor(client: SilentClient) -> None:
    """Connects, says hello and falls silent, again and again until faults stop."""
    await _until_settling(client, _stay_silent)


async def _stay_silent(client: NativeClient, conn: Connection) -> None:
    world = client.world
    said = trio.current_time()  # the hello went out as the connection opened
    bound = world.profile.idle_timeout + IDLE_MARGIN
    with trio.move_on_after(bound):
        await conn.ended.wait()
    intact = conn.link.healthy and conn.epoch == world.oracle.epoch and world.host.up
    if not conn.welcomed.is_set() or not intact or conn.end == "idle_timeout":
        return
    state = f"ended ({conn.end}) without" if conn.ended.is_set() else "still open, no"
    world.fail(
        IDLE_DROPPED,
        f"{client.user}@link{conn.link.number}: silent since {said:.3f}s, {state} idle_timeout"
        f" error after {trio.current_time() - said:.3f}s",
    )


async def flood_actor(world: World, name: str, rng: random.Random) -> None:
    """A keyless connection: sends `{` (and never the rest), a wrong key or nothing, waits to
    be dropped, and connects again at once, until faults stop."""
    while not world.settling.is_set():
        try:
            link = await world.network.connect(name)
        except OSError:
            await trio.sleep(rng.uniform(0.01, 0.2))
            continue
        style = rng.choice(FLOOD_STYLES)
        payload = {
            "brace": b"{",
            "wrong key": line(type="hello", key="w" * len(KEY), user=name),
            "nothing": b"",
        }[style]
        with trio.move_on_after(FLOOD_HOLD):
            try:
                if payload:
                    await link.client.send_all(payload)
                while await link.client.receive_some():
                    pass
            except GONE:
                pass
        link.client.close_now()
        await trio.sleep(rng.uniform(0.05, 0.3))
