"""The simulated network: an in-memory listener and byte streams with faults.

Theory of operation
-------------------
A `Link` is one TCP-like connection: two `Pipe`s, one per direction. A pipe holds bytes in
flight as segments stamped with the simulated time they arrive (`now + latency`), up to a
bounded `capacity`; a writer waits while the pipe is full, which is how a client that stops
reading pushes back on the server. A reader gets whatever has arrived, cut into a random
chunk size (down to one byte), and nothing while the pipe is stalled. Closing an end sends
end-of-file after the data in flight (like FIN); `Link.reset` breaks both directions at once
and throws away what is in flight (like RST). A stream also offers the fan-out fast path's
non-blocking write (`SimStream.direct_writer`): it takes what fits in the pipe now, and
refuses to run while a task is inside `send_all`, so two writers at once fail the run. While
the server is out of file descriptors its listeners fail `accept` with EMFILE and keep the
waiting connection. No link runs a task of its
own: the clock only moves because readers sleep until data arrives, so the mock clock's
autojump drives it (the fault injectors are tasks the director starts).

Every random choice comes from a `random.Random` seeded from the run's seed, and links are
kept in creation order, so the network is as reproducible as the scheduler.
"""

from __future__ import annotations

import errno
import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

from papaya_trio.fanout import DirectWriter
from sim.trace import Trace

RECEIVE_DEFAULT = 65536
CONNECT_TIMEOUT = 3.0  # simulated seconds a connect waits across a partition
TCP_PORT, HTTP_PORT = "tcp", "http"  # the server's two listeners (both TCP dialects; HTTP+WS)
S = TypeVar("S", bound=trio.abc.Stream)


@dataclass(frozen=True, slots=True)
class NetworkFaults:
    """How hostile the network is: link shapes and how often links stall or reset."""

    latency: tuple[float, float] = (0.0005, 0.02)
    bandwidth: tuple[float, float] = (5_000.0, 5_000_000.0)  # bytes per second, log-uniform
    capacity: tuple[int, int] = (256, 16384)  # small buffers make writes span time
    tiny_chunks: float = 0.2  # share of links that deliver 1 to 8 bytes per read
    stall_every: float = 0.0  # mean simulated seconds between stalls (0: never)
    stall_for: tuple[float, float] = (0.1, 3.0)
    reset_every: float = 0.0  # mean simulated seconds between resets of a random link
    backlog: int = 16
    fd_exhaustion_every: float = 0.0  # mean simulated seconds between runs out of descriptors
    fd_exhaustion_for: tuple[float, float] = (0.1, 2.0)
    # Partitions: now and then a share of the clients cannot reach the server for a while
    # (every link of theirs holds its bytes, connects go unanswered), then it heals.
    partition_every: float = 0.0  # mean simulated seconds between partitions (0: never)
    partition_for: tuple[float, float] = (0.5, 12.0)
    partition_share: float = 0.5  # share of the clients seen so far that are cut off


class Pipe:
    """One direction of a link: bounded bytes in flight, delivered after the latency."""

    def __init__(
        self, rng: random.Random, latency: float, bandwidth: float, capacity: int, max_chunk: int
    ) -> None:
        self._randbelow: Callable[[int], int] = rng._randbelow  # type: ignore[attr-defined]
        self._latency = latency
        self._bandwidth = bandwidth
        self.capacity = capacity
        self._max_chunk = max_chunk
        self._segments: deque[tuple[float, bytes]] = deque()
        self._head_taken = 0  # bytes of the first segment already read
        self._buffered = 0
        self._last_arrival = 0.0
        self._wire_free = 0.0  # when the bytes written so far have all gone onto the wire
        self._pacing_until = 0.0  # a blocking write is putting a piece on the wire until then
        self._changed = trio.lowlevel.ParkingLot()
        # The run's clock, read directly: trio.current_time() is a few calls deeper.
        self._now: Callable[[], float] = trio.lowlevel.current_clock().current_time
        self.stalled_until = 0.0
        self.cut_until = 0.0  # a partition: bytes and end of file wait till then
        self.eof = False
        self.broken = False
        self.reader_closed = False
        self.writer_gave_up = False  # a write was cancelled before all of it went out

    def wake(self) -> None:
        """Let waiting readers and writers look again."""
        if self._changed:  # most of the time nobody waits
            self._changed.unpark_all()

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                if self.broken or self._reader_gone():
                    raise trio.BrokenResourceError("connection reset by peer")
                room = self.capacity - self._buffered
                if room <= 0:
                    await self._changed.park()
                    continue
                piece = bytes(view[:room])
                view = view[room:]
                # Putting bytes on the wire takes time (after what is still going onto it):
                # writes overlap with what else happens.
                start = max(self._now(), self._wire_free)
                self._pacing_until = start + len(piece) / self._bandwidth
                await trio.sleep_until(self._pacing_until)
                self._wire_free = self._now()
                if self.broken or self._reader_gone():
                    raise trio.BrokenResourceError("connection reset by peer")
                # Segments never overtake each other, whatever the latency.
                arrival = max(self._now() + self._latency, self._last_arrival)
                self._last_arrival = arrival
                self._segments.append((arrival, piece))
                self._buffered += len(piece)
                self.wake()
        except trio.Cancelled:
            self.writer_gave_up = True  # cut off mid-write: nothing more can follow it
            raise

    @property
    def carrying(self) -> bool:
        """Bytes are on their way: going onto the wire, in flight, or arrived and unread."""
        return self._buffered > 0 or max(self._wire_free, self._pacing_until) > self._now()

    def _reader_gone(self) -> bool:
        """The reading end has closed, and the writer may know it (across a partition the
        writer's bytes are taken as if it had not: it learns when the partition heals)."""
        return self.reader_closed and self.cut_until <= self._now()

    def send_nowait(self, data: bytes | memoryview) -> int:
        """Take what fits now, without waiting (the fan-out fast path's write); 0 when full.
        No time passes for the writer: the bytes go onto the wire after those before them,
        and arrive after their own time on it plus the latency."""
        if self.broken or self.reader_closed:
            raise trio.BrokenResourceError("connection reset by peer")
        piece = bytes(data[: max(0, self.capacity - self._buffered)])
        if piece:
            self._wire_free = max(self._now(), self._wire_free) + len(piece) / self._bandwidth
            arrival = max(self._wire_free + self._latency, self._last_arrival)
            self._last_arrival = arrival
            self._segments.append((arrival, piece))
            self._buffered += len(piece)
            self.wake()
        return len(piece)

    def receive_now(self, max_bytes: int) -> bytes | None:
        """What a read gets without waiting (b"" at end of file), or None if it must wait:
        `receive` without a coroutine, for the common case of bytes already there."""
        if self.broken:
            raise trio.BrokenResourceError("connection reset by peer")
        if self.reader_closed:
            raise trio.ClosedResourceError("this end is closed")
        if self._segments:
            if max(self._segments[0][0], self.stalled_until, self.cut_until) <= self._now():
                return self._take(max_bytes)
        elif self.eof and self.cut_until <= self._now():
            return b""
        return None

    async def receive(self, max_bytes: int) -> bytes:
        while (data := self.receive_now(max_bytes)) is None:
            if self._segments:
                ready = max(self._segments[0][0], self.stalled_until, self.cut_until)
                with trio.move_on_at(ready):
                    await self._changed.park()
            elif self.eof:
                with trio.move_on_at(self.cut_until):  # the FIN waits for the partition too
                    await self._changed.park()
            else:
                await self._changed.park()
        return data

    def _take(self, max_bytes: int) -> bytes:
        # `1 + _randbelow(n)` is what `randint(1, n)` computes, without its argument checks.
        want = min(1 + self._randbelow(self._max_chunk), max_bytes)
        segments = self._segments
        data = segments[0][1]
        start = self._head_taken
        # The first segment is consumed in place (`_head_taken`), never copied for the rest:
        # a link of tiny chunks would otherwise copy a segment once per read.
        if start + want < len(data):  # the read ends inside the first segment
            self._head_taken = start + want
            self._buffered -= want
            self.wake()
            return data[start : start + want]
        now = self._now()
        pieces: list[bytes] = []
        size = 0
        while segments and size < want and segments[0][0] <= now:
            data = segments[0][1]
            start = self._head_taken
            end = min(len(data), start + want - size)
            pieces.append(data if start == 0 and end == len(data) else data[start:end])
            size += end - start
            if end == len(data):
                segments.popleft()
                self._head_taken = 0
            else:
                self._head_taken = end
        self._buffered -= size
        self.wake()
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def close_writer(self) -> None:
        """End of file after the bytes in flight."""
        self.eof = True
        self.wake()

    def close_reader(self) -> None:
        """The reading end is gone: drop what is in flight, the writer gets an error."""
        self.reader_closed = True
        self._segments.clear()
        self._head_taken = self._buffered = 0
        self.wake()

    def reset(self) -> None:
        """Break this direction at once."""
        self.broken = True
        self._segments.clear()
        self._head_taken = self._buffered = 0
        self.wake()


class SimStream(trio.abc.HalfCloseableStream):
    """One end of a link. Like trio's streams, it refuses two concurrent senders or
    receivers (a bug in whoever does it)."""

    def __init__(self, link: Link, outgoing: Pipe, incoming: Pipe, name: str) -> None:
        self.link = link
        self._outgoing = outgoing
        self._incoming = incoming
        self.name = name
        # The client's address as the server sees it (the server reads this attribute of a
        # stream that is not a socket); None: unknown, each connection a group of its own.
        self.peer_address: tuple[str, int] | None = None
        self.closed = False
        self._sending = False
        self._receiving = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError(f"{self.name}: another task is sending")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint()
            if self.closed or self._outgoing.eof:
                raise trio.ClosedResourceError(f"{self.name}: this end is closed")
            await self._outgoing.send(bytes(data))
        finally:
            self._sending = False

    def direct_writer(self) -> DirectWriter:
        """A write that never waits (see `papaya_trio.fanout`). Like `send_all`, it refuses to
        run while another task is sending: two writers at once is a bug in the caller."""

        def write(data: bytes | memoryview) -> int:
            if self._sending:
                raise trio.BusyResourceError(f"{self.name}: written while another task sends")
            if self.closed or self._outgoing.eof:
                raise trio.ClosedResourceError(f"{self.name}: this end is closed")
            return self._outgoing.send_nowait(data)

        return DirectWriter(write)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise trio.ClosedResourceError(f"{self.name}: this end is closed")
        self._outgoing.close_writer()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError(f"{self.name}: another task is receiving")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint()
            if self.closed:
                raise trio.ClosedResourceError(f"{self.name}: this end is closed")
            data = self._incoming.receive_now(max_bytes or RECEIVE_DEFAULT)
            if data is None:
                data = await self._incoming.receive(max_bytes or RECEIVE_DEFAULT)
            return data
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        self.close_now()
        await trio.lowlevel.checkpoint()

    def close_now(self) -> None:
        """Close this end without waiting (what a process exit does)."""
        if not self.closed:
            self.closed = True
            self._outgoing.close_writer()
            self._incoming.close_reader()


class Link:
    """A connection between a client end and a server end."""

    def __init__(
        self, number: int, rng: random.Random, faults: NetworkFaults, who: str = ""
    ) -> None:
        self.number = number
        self.who = who  # the client at the client end
        latency = rng.uniform(*faults.latency)
        low, high = faults.bandwidth
        bandwidth = math.exp(rng.uniform(math.log(low), math.log(high)))
        capacity = rng.randint(*faults.capacity)
        max_chunk = 8 if rng.random() < faults.tiny_chunks else rng.choice((64, 1024, 65536))
        shape = (latency, bandwidth, capacity, max_chunk)
        self.up = Pipe(random.Random(rng.getrandbits(64)), *shape)
        self.down = Pipe(random.Random(rng.getrandbits(64)), *shape)
        self.latency = latency
        self.client = SimStream(self, self.up, self.down, f"link{number}/client")
        self.server = SimStream(self, self.down, self.up, f"link{number}/server")
        self.healthy = True  # false once it has been stalled: latency bounds do not apply

    @property
    def dead(self) -> bool:
        """Both ends closed, or reset."""
        return self.up.broken or (self.client.closed and self.server.closed)

    def reset(self) -> None:
        """Like a TCP RST: both directions break and lose what is in flight."""
        self.up.reset()
        self.down.reset()

    def cut(self, until: float) -> None:
        """A partition: nothing crosses before `until`, in either direction, not even the
        end of a connection (0: heal now); bytes in flight wait, writers block when the
        link is full."""
        if until:
            self.healthy = False
        for pipe in (self.up, self.down):
            pipe.cut_until = until
            pipe.wake()

    def stall(self, until: float) -> None:
        """Nothing arrives in either direction before `until` (0: end the stall)."""
        if until:
            self.healthy = False
        for pipe in (self.up, self.down):
            pipe.stalled_until = until
            pipe.wake()


class ChannelListener(trio.abc.Listener[trio.abc.Stream], Generic[S]):
    """A listener whose incoming connections wait in a bounded memory channel (the backlog).

    The simulation's `SimListener` and the tests' in-memory listener are both built on it.
    """

    def __init__(self, backlog: int) -> None:
        self._send, self._receive = trio.open_memory_channel[S](backlog)

    async def accept(self) -> trio.abc.Stream:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise trio.ClosedResourceError("listener closed") from None

    def refuse_waiting(self) -> list[S]:
        """Stop listening: close the backlog and return the connections nobody accepted."""
        waiting: list[S] = []
        while True:
            try:
                waiting.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        self._receive.close()
        return waiting

    async def aclose(self) -> None:
        self.refuse_waiting()
        await trio.lowlevel.checkpoint()


class SimListener(ChannelListener[SimStream]):
    """One of the server's listening sockets on the simulated network. While the server is
    out of file descriptors (`SimNetwork.fd_exhausted_until`), accepting a waiting connection
    fails with EMFILE and the connection stays first in line, as the kernel keeps it."""

    def __init__(self, network: SimNetwork, port: str, backlog: int) -> None:
        super().__init__(backlog)
        self._network = network
        self.port = port
        self._held: SimStream | None = None

    async def accept(self) -> trio.abc.Stream:
        if self._held is None:
            stream = await super().accept()
            assert isinstance(stream, SimStream)
            self._held = stream
        else:
            await trio.lowlevel.checkpoint()
        if trio.current_time() < self._network.fd_exhausted_until:
            raise OSError(errno.EMFILE, "too many open files")
        stream, self._held = self._held, None
        return stream

    def offer(self, stream: SimStream) -> bool:
        """Queue an incoming connection; False if the backlog is full."""
        try:
            self._send.send_nowait(stream)
        except (trio.WouldBlock, trio.BrokenResourceError):
            return False
        return True

    async def aclose(self) -> None:
        self._network.stop_listening(self)
        # Connections nobody accepted are refused, as the kernel does when the socket closes.
        held = [self._held] if self._held is not None else []
        self._held = None
        for stream in held + self.refuse_waiting():
            stream.link.reset()
        await trio.lowlevel.checkpoint()


class SimNetwork:
    """Where clients connect to the (one) server, and where faults are injected."""

    def __init__(
        self,
        rng: random.Random,
        faults: NetworkFaults,
        trace: Trace,
        address_of: Callable[[str], tuple[str, int] | None] = lambda who: None,
    ) -> None:
        self._rng = rng
        self.faults = faults
        self._trace = trace
        self._address_of = address_of  # a client's address, from its name
        self._listeners: dict[str, SimListener] = {}
        self._links: dict[int, Link] = {}
        self._numbers = itertools.count(1)
        self.fd_exhausted_until = 0.0
        self._seen: dict[str, None] = {}  # clients that connected, in order (partitions)
        self._cut: dict[str, float] = {}  # partitioned clients: until when

    def listen(self, port: str) -> SimListener:
        """Open the server's listener on `port` (TCP_PORT or HTTP_PORT)."""
        assert port not in self._listeners, f"the server is already listening on {port}"
        self._listeners[port] = listener = SimListener(self, port, self.faults.backlog)
        return listener

    def stop_listening(self, listener: SimListener) -> None:
        """Called by the listener when it closes."""
        if self._listeners.get(listener.port) is listener:
            del self._listeners[listener.port]

    async def connect(self, who: str, port: str = TCP_PORT) -> Link:
        """Open a connection; OSError(ECONNREFUSED) if the server is not listening."""
        link = Link(next(self._numbers), random.Random(self._rng.getrandbits(64)), self.faults, who)
        link.server.peer_address = self._address_of(who)
        self._seen[who] = None
        began = trio.current_time()
        await trio.sleep(link.latency)
        if self._cut.get(who, 0.0) > trio.current_time():
            # Partitioned: the SYN goes unanswered until the partition heals (retransmits)
            # or the connect times out.
            await trio.sleep_until(min(self._cut[who], began + CONNECT_TIMEOUT))
            if self._cut.get(who, 0.0) > trio.current_time():
                self._trace.record("connect_timeout", who=who)
                raise OSError(errno.ETIMEDOUT, "connection timed out")
        listener = self._listeners.get(port)
        if listener is None or not listener.offer(link.server):
            self._trace.record("refused", who=who)
            raise OSError(errno.ECONNREFUSED, "connection refused")
        self._links[link.number] = link
        self._trace.record("connect", who=who, link=link.number)
        return link

    def live_links(self) -> list[Link]:
        """Links not yet dead, oldest first (forgetting the dead ones)."""
        for number in [n for n, link in self._links.items() if link.dead]:
            del self._links[number]
        return list(self._links.values())

    def reset_all(self) -> None:
        """The server's host died: every connection is reset."""
        for link in self.live_links():
            link.reset()

    def heal(self) -> None:
        """End every stall and descriptor shortage now (the fault-free phase begins)."""
        self.fd_exhausted_until = 0.0
        self._cut.clear()
        for link in self.live_links():
            link.stall(0.0)
            link.cut(0.0)

    async def run_fd_exhaustion(self, rng: random.Random) -> None:
        """Now and then the server runs out of file descriptors for a while, until cancelled."""
        faults = self.faults
        if not faults.fd_exhaustion_every:
            return
        while True:
            await trio.sleep(rng.expovariate(1.0 / faults.fd_exhaustion_every))
            length = rng.uniform(*faults.fd_exhaustion_for)
            self.fd_exhausted_until = trio.current_time() + length
            self._trace.record("fd_exhausted", seconds=round(length, 6))
            await trio.sleep(length)

    async def run_partitions(self, rng: random.Random) -> None:
        """Now and then cut a share of the clients off the server for a while, then heal,
        until cancelled (the partition in force then ends with `heal`)."""
        faults = self.faults
        if not faults.partition_every:
            return
        while True:
            await trio.sleep(rng.expovariate(1.0 / faults.partition_every))
            names = [who for who in self._seen if rng.random() < faults.partition_share]
            if not names:
                continue
            length = rng.uniform(*faults.partition_for)
            until = trio.current_time() + length
            for who in names:
                self._cut[who] = until
            links = [link for link in self.live_links() if link.who in self._cut]
            for link in links:
                link.cut(until)
            self._trace.record(
                "partition",
                who=names,
                links=[link.number for link in links],
                seconds=round(length, 6),
            )
            await trio.sleep(length)
            for who in names:
                if self._cut.get(who) == until:
                    del self._cut[who]
            for link in self.live_links():
                if link.who in names and link.up.cut_until == until:
                    link.cut(0.0)
            self._trace.record("partition_healed", who=names)

    async def run_faults(self) -> None:
        """Stall and reset random links at the configured rates, until cancelled."""
        faults = self.faults
        rates = [r for r in (faults.stall_every, faults.reset_every) if r > 0]
        if not rates:
            await trio.sleep_forever()
        mean = 1.0 / sum(1.0 / r for r in rates)
        while True:
            await trio.sleep(self._rng.expovariate(1.0 / mean))
            links = self.live_links()
            if not links:
                continue
            link = self._rng.choice(links)
            stall_share = (1.0 / faults.stall_every) if faults.stall_every else 0.0
            if self._rng.random() * (1.0 / mean) < stall_share:
                length = self._rng.uniform(*faults.stall_for)
                link.stall(trio.current_time() + length)
                self._trace.record("stall", link=link.number, seconds=round(length, 6))
            else:
                link.reset()
                self._trace.record("reset", link=link.number)
