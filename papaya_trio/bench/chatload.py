"""The chat load generator: N native clients in one room, a paced total message rate.

Every client opens a TCP connection, says hello (native dialect, docs/protocol.md) with the
room's key and waits for its welcome; once all N are in, the generator prints
``{"event": "ready"}``. Then one pacer sends `rate` messages per second in total, on a fixed
schedule, from the first `senders` clients in turn; message k's text is ``bench k`` padded to
`message_bytes`, and its send time is kept in an array indexed by k. Every client (senders
included: the server echoes to everybody) reads its stream and, for every ``message`` line
whose text is one of ours, records the delivery latency (receipt time minus send time, one
monotonic clock, one process) in a bounded histogram.

After the sending window the generator waits up to `drain` seconds for the last deliveries,
then counts: a message sent is *lost* for every client that did not receive it. Sequence
numbers must grow strictly at each client, so a count equal to the number sent means every
client got every message exactly once. It reports what it achieved (rate, deliveries, lost,
latency percentiles, errors, its own CPU) as one JSON line, and flags a run it cannot vouch
for: a loss, an error from the server, a client the server dropped, a rate short of the
request, or a generator that used most of a core.

With ``--rate 0`` the clients only say hello and stay idle: the idle-connections measurement.

The hello, the welcome and the sends go through the shared client module
(`papaya_trio.protocol.client`); the received stream is scanned with one regular expression
instead of decoding every object, so that the generator's CPU stays far below the server's.

Bounds: at most `MAX_CONNECTIONS` clients, `loadgen.MAX_DURATION` seconds, `MAX_MESSAGES` messages;
at most `CONNECT_CONCURRENCY` connections being opened at once; partial lines are bounded by
`MAX_LINE`. Loopback by default. Run:
``python -m papaya_trio.bench.chatload --port P --key-file D/key --connections 8 --rate 20``.
"""

from __future__ import annotations

import argparse
import array
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from papaya_trio.bench.loadgen import check_bounds
from papaya_trio.bench.stats import LatencyHistogram
from papaya_trio.bench.system import raise_open_file_limit
from papaya_trio.protocol import client as protocol

MAX_CONNECTIONS = 20_000
MAX_MESSAGES = 1_000_000
CONNECT_CONCURRENCY = 64
#: The longest line the generator buffers (the server's default max line is 16 KiB).
MAX_LINE = 64 * 1024
RECEIVE_BYTES = 64 * 1024
DEFAULT_RATE = 20.0
DEFAULT_SENDERS = 8
DEFAULT_MESSAGE_BYTES = 64
DEFAULT_DRAIN = 5.0
#: A run is flagged when it sent less than (1 - tolerance) of the requested messages.
DEFAULT_TOLERANCE = 0.05
CPU_SATURATION = 0.9
#: File descriptors the generator needs besides one per client.
SPARE_FILES = 64
TEXT_PREFIX = "bench "
# The server writes compact JSON with "seq" before "text" (papaya_trio.protocol.native).
_MESSAGE = re.compile(rb'"type":"message","seq":(\d+),[^\n]*?"text":"bench (\d+)')
_ERROR = b'"type":"error"'


class LoadError(Exception):
    """The generator could not set up its clients."""


@dataclass(frozen=True)
class ChatLoadSpec:
    """The room's workload: where, how many clients, how many of them send, how fast."""

    port: int
    key: str
    connections: int
    duration: float
    rate: float = DEFAULT_RATE
    senders: int = DEFAULT_SENDERS
    message_bytes: int = DEFAULT_MESSAGE_BYTES
    drain: float = DEFAULT_DRAIN
    host: str = "127.0.0.1"
    tolerance: float = DEFAULT_TOLERANCE

    def __post_init__(self) -> None:
        check_bounds(self.connections, self.duration, MAX_CONNECTIONS)
        if self.rate < 0 or self.rate * self.duration > MAX_MESSAGES:
            raise ValueError(f"rate must be >= 0 and send at most {MAX_MESSAGES} messages")
        if self.senders < 1:
            raise ValueError("at least one sender")
        if not len(TEXT_PREFIX) + 8 <= self.message_bytes <= 4096:
            raise ValueError("message_bytes must be between 14 and 4096")
        if self.drain < 0:
            raise ValueError("drain can't be negative")

    @property
    def messages(self) -> int:
        """How many messages the schedule holds."""
        return math.floor(self.rate * self.duration)


class Client:
    """One connection: its stream, and what it has received."""

    def __init__(self, index: int, stream: trio.SocketStream, head: int) -> None:
        self.index = index
        self.stream = stream
        self.head = head  # the newest message before we joined: older ones are history
        self.last_seq = head
        self.out_of_order = 0
        self.errors = 0
        self.first_error = ""
        self.closed_by_server = False


class ChatLoad:
    """The generator's state; `run` does the whole job."""

    def __init__(self, spec: ChatLoadSpec) -> None:
        self.spec = spec
        self.clients: list[Client] = []
        self.sent_at = array.array("d", bytes(8 * max(1, spec.messages)))
        self.sent = 0
        self.histogram = LatencyHistogram()
        self.join_failures: list[str] = []
        self.delivered = 0
        #: Deliveries the sending window called for, known once it has ended.
        self._expected: int | None = None
        self._all_delivered = trio.Event()
        self.send_failures = 0

    # --- setting up ---------------------------------------------------------------------
    async def _join(self, index: int, limiter: trio.CapacityLimiter) -> None:
        """Connect client `index` and wait for its welcome; a failure is noted, not raised."""
        async with limiter:
            try:
                stream = await trio.open_tcp_stream(self.spec.host, self.spec.port)
            except OSError as exc:
                self.join_failures.append(f"client {index}: cannot connect: {exc}")
                return
            try:
                head, rest = await self._welcome(index, stream)
            except (OSError, trio.BrokenResourceError, LoadError) as exc:
                await trio.aclose_forcefully(stream)
                self.join_failures.append(str(exc) or type(exc).__name__)
                return
        client = Client(index, stream, head)
        self.clients.append(client)
        # History (none in a fresh room) may follow the welcome in the same read.
        self._take(client, rest, trio.current_time())

    async def _welcome(self, index: int, stream: trio.SocketStream) -> tuple[int, bytes]:
        """Say hello; return the welcome's head and whatever followed it in the same read."""
        await stream.send_all(protocol.encode(protocol.hello(self.spec.key, f"b{index}", None)))
        line = bytearray()
        while b"\n" not in line:
            chunk = await stream.receive_some(RECEIVE_BYTES)
            if not chunk or len(line) > MAX_LINE:
                raise LoadError(f"client {index}: no welcome: {bytes(line[:200])!r}")
            line += chunk
        first, _, rest = bytes(line).partition(b"\n")
        try:
            protocol.check_first_line(first)
            welcome = protocol.parse_event(protocol.parse_json(first))
        except protocol.RemoteProtocolError as exc:
            raise LoadError(f"client {index}: {exc}: {first[:200]!r}") from None
        if isinstance(welcome, protocol.Welcome):
            return welcome.head, rest
        raise LoadError(f"client {index}: refused: {first[:200]!r}")

    async def _join_all(self) -> None:
        limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)
        async with trio.open_nursery() as nursery:
            for index in range(self.spec.connections):
                nursery.start_soon(self._join, index, limiter)
        self.clients.sort(key=lambda c: c.index)
        if self.join_failures:
            for client in self.clients:
                await trio.aclose_forcefully(client.stream)
            count = len(self.join_failures)
            raise LoadError(f"{count} clients could not join; first: {self.join_failures[0]}")

    # --- receiving ----------------------------------------------------------------------
    def _take(self, client: Client, block: bytes, now: float) -> None:
        """Account for the complete lines in `block`, read at `now`."""
        for match in _MESSAGE.finditer(block):
            seq = int(match[1])
            if seq <= client.last_seq:
                client.out_of_order += 1
                continue
            client.last_seq = seq
            if seq <= client.head:
                continue
            number = int(match[2])
            if number < self.sent:
                self.delivered += 1
                self.histogram.add(now - self.sent_at[number])
        if self._expected is not None and self.delivered >= self._expected:
            self._all_delivered.set()
        if _ERROR in block:
            client.errors += block.count(_ERROR)
            if not client.first_error:
                start = block.index(_ERROR)
                client.first_error = block[max(0, start - 1) : start + 200].decode(errors="replace")

    async def _read(self, client: Client) -> None:
        pending = bytearray()
        while True:
            try:
                chunk = await client.stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            if not chunk:
                client.closed_by_server = True
                return
            now = trio.current_time()
            pending += chunk
            end = pending.rfind(b"\n")
            if end < 0:
                if len(pending) > MAX_LINE:
                    client.errors += 1
                    client.first_error = f"a line longer than {MAX_LINE} bytes"
                    return
                continue
            self._take(client, bytes(pending[: end + 1]), now)
            del pending[: end + 1]

    # --- sending ------------------------------------------------------------------------
    def _line(self, number: int) -> bytes:
        text = f"{TEXT_PREFIX}{number} ".ljust(self.spec.message_bytes, "x")
        return protocol.encode(protocol.send(text, f"k{number}"))

    async def _pace(self, start: float) -> None:
        """Send message k at ``start + k / rate`` from sender k mod S, until the window ends."""
        if not self.spec.messages:
            await trio.sleep_until(start + self.spec.duration)
            return
        senders = self.clients[: min(self.spec.senders, len(self.clients))]
        end = start + self.spec.duration
        for number in range(self.spec.messages):
            await trio.sleep_until(start + number / self.spec.rate)
            if trio.current_time() >= end:
                return
            line = self._line(number)
            self.sent_at[number] = trio.current_time()
            self.sent = number + 1
            try:
                await senders[number % len(senders)].stream.send_all(line)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.send_failures += 1  # the server dropped the sender: its reader says so

    async def _drain(self) -> None:
        """Wait up to `drain` seconds for every client to have every message sent."""
        self._expected = self.sent * len(self.clients)
        if self.delivered < self._expected:
            with trio.move_on_after(self.spec.drain):
                await self._all_delivered.wait()

    async def run(self, on_ready: Callable[[], None]) -> dict[str, object]:
        """Join, call `on_ready`, send for the duration, drain, and return the result.

        Raises LoadError if some client could not join.
        """
        joined_at = trio.current_time()
        await self._join_all()
        try:
            connect_seconds = trio.current_time() - joined_at
            on_ready()
            cpu_before = time.process_time()
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                for client in self.clients:
                    nursery.start_soon(self._read, client)
                await self._pace(start)
                send_seconds = trio.current_time() - start
                await self._drain()
                nursery.cancel_scope.cancel()
            cpu_seconds = time.process_time() - cpu_before
            elapsed = trio.current_time() - start
        finally:
            for client in self.clients:
                await trio.aclose_forcefully(client.stream)
        return self._result(connect_seconds, send_seconds, elapsed, cpu_seconds)

    # --- judging ------------------------------------------------------------------------
    def _result(
        self, connect_seconds: float, send_seconds: float, elapsed: float, cpu_seconds: float
    ) -> dict[str, object]:
        spec = self.spec
        delivered = self.delivered
        lost = self.sent * len(self.clients) - delivered
        errors = sum(c.errors for c in self.clients)
        dropped = sum(c.closed_by_server for c in self.clients)
        out_of_order = sum(c.out_of_order for c in self.clients)
        reasons = []
        if spec.messages and self.sent < (1 - spec.tolerance) * spec.messages:
            reasons.append(f"sent {self.sent} of {spec.messages} messages")
        if lost:
            reasons.append(f"{lost} deliveries lost")
        if errors:
            first = next(c.first_error for c in self.clients if c.first_error)
            reasons.append(f"{errors} errors from the server, first: {first}")
        if dropped:
            reasons.append(f"the server closed {dropped} connections")
        if self.send_failures:
            reasons.append(f"{self.send_failures} messages could not be sent")
        if out_of_order:
            reasons.append(f"{out_of_order} messages out of order or repeated")
        if cpu_seconds > CPU_SATURATION * elapsed:
            reasons.append(f"load generator used {100 * cpu_seconds / elapsed:.0f}% of a core")
        latency = self.histogram
        return {
            "connections": len(self.clients),
            "senders": min(spec.senders, len(self.clients)),
            "message_bytes": spec.message_bytes,
            "requested_rate": spec.rate,
            "sent": self.sent,
            "achieved_rate": self.sent / spec.duration,
            "delivered": delivered,
            "deliveries_per_second": delivered / send_seconds if send_seconds else 0.0,
            "lost": lost,
            "errors": errors,
            "dropped_connections": dropped,
            "out_of_order": out_of_order,
            "send_failures": self.send_failures,
            "latency_p50_ms": 1e3 * latency.percentile(50) if latency.count else None,
            "latency_p99_ms": 1e3 * latency.percentile(99) if latency.count else None,
            "latency_max_ms": 1e3 * latency.max if latency.count else None,
            "connect_seconds": connect_seconds,
            "duration": spec.duration,
            "elapsed": elapsed,
            "cpu_seconds": cpu_seconds,
            "cpu_percent": 100 * cpu_seconds / elapsed if elapsed else 0.0,
            "flagged": bool(reasons),
            "flag_reason": "; ".join(reasons),
        }


def _say_ready() -> None:
    print(json.dumps({"event": "ready"}), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 with a result line (flagged or not), 1 if the clients could not join."""
    parser = argparse.ArgumentParser(description="chat-room load generator for the bench")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key-file", type=Path, required=True, help="the room's key file")
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of sending")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="messages/s, total")
    parser.add_argument("--senders", type=int, default=DEFAULT_SENDERS)
    parser.add_argument("--message-bytes", type=int, default=DEFAULT_MESSAGE_BYTES)
    parser.add_argument("--drain", type=float, default=DEFAULT_DRAIN)
    ns = parser.parse_args(argv)
    try:
        spec = ChatLoadSpec(
            port=ns.port,
            key=ns.key_file.read_text().strip(),
            connections=ns.connections,
            duration=ns.duration,
            rate=ns.rate,
            senders=ns.senders,
            message_bytes=ns.message_bytes,
            drain=ns.drain,
            host=ns.host,
        )
        raise_open_file_limit(spec.connections + SPARE_FILES)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    try:
        result = trio.run(ChatLoad(spec).run, _say_ready)
    except LoadError as exc:
        print(json.dumps({"event": "failed", "reason": str(exc)}), flush=True)
        return 1
    print(json.dumps({"event": "result", **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
