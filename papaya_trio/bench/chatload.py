"""The chat load generator: N clients in one room, a paced total message rate.

Every client opens a TCP connection and joins in its dialect (`chatwire`: the native JSON
lines, or the papayaChat dialect of the original C daemon); the first client joins before
the others. With several ports (several server processes sharing one room), client i
connects to port i mod K, so the clients are spread evenly. Once all N are in and nothing
has arrived for `QUIET` seconds (what the joins set off, such as presence events, is over),
the generator prints ``{"event": "ready"}``. Then one pacer sends `rate` messages per second in
total, on a fixed schedule, from the first `senders` clients in turn; message k's text is
``bench k`` padded to `message_bytes`, and its send time is kept in an array indexed by k.
Every client (senders included: the server echoes to everybody) reads its stream and, for
every message of ours it receives for the first time, records the delivery latency (receipt
time minus send time, one monotonic clock, one process) in a bounded histogram.

After the sending window the generator waits up to `drain` seconds for the last deliveries,
then counts: a message sent is *lost* for every client that did not receive it, and one
received twice (or, in the native dialect, out of the server's order) is counted apart. It
reports what it achieved (rate, deliveries, lost, latency percentiles, errors, its own CPU)
as one JSON line, and flags a run it cannot vouch for: a loss, an error from the server, a
client the server dropped, a rate short of the request, or a generator that used most of a
core.

With ``--rate 0`` the clients only join and stay idle: the idle-connections measurement.

Bounds: at most `MAX_CONNECTIONS` clients, `loadgen.MAX_DURATION` seconds, `MAX_MESSAGES`
messages (and in the papayaChat dialect, whose clients keep a bit per message,
`MAX_PAPAYA_BITS` bits in all); at most `CONNECT_CONCURRENCY` connections being opened at
once; partial lines are bounded by `chatwire.MAX_LINE`. Loopback by default. Run:
``python -m papaya_trio.bench.chatload --port P --key-file D/key --connections 8 --rate 20``.
"""

from __future__ import annotations

import argparse
import array
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from papaya_trio.bench.chatwire import (
    DIALECTS,
    MAX_LINE,
    RECEIVE_BYTES,
    TEXT_PREFIX,
    Client,
    LoadError,
    NativeWire,
    PapayaWire,
    Wire,
)
from papaya_trio.bench.loadgen import check_bounds
from papaya_trio.bench.stats import LatencyHistogram
from papaya_trio.bench.system import raise_open_file_limit

MAX_CONNECTIONS = 20_000
MAX_MESSAGES = 1_000_000
#: Bits of received-message maps a papayaChat-dialect run may keep (32 MiB).
MAX_PAPAYA_BITS = 1 << 28
CONNECT_CONCURRENCY = 64
DEFAULT_RATE = 20.0
DEFAULT_SENDERS = 8
DEFAULT_MESSAGE_BYTES = 64
DEFAULT_DRAIN = 5.0
DEFAULT_DIALECT = "native"
#: A run is flagged when it sent less than (1 - tolerance) of the requested messages.
DEFAULT_TOLERANCE = 0.05
CPU_SATURATION = 0.9
#: Seconds without a byte received after which the room counts as settled after the joins.
QUIET = 0.5
SETTLE_LIMIT = 120.0
#: File descriptors the generator needs besides one per client.
SPARE_FILES = 64


@dataclass(frozen=True)
class ChatLoadSpec:
    """The room's workload: where, how many clients, how many of them send, how fast."""

    ports: tuple[int, ...]
    key: str
    connections: int
    duration: float
    rate: float = DEFAULT_RATE
    senders: int = DEFAULT_SENDERS
    message_bytes: int = DEFAULT_MESSAGE_BYTES
    drain: float = DEFAULT_DRAIN
    host: str = "127.0.0.1"
    tolerance: float = DEFAULT_TOLERANCE
    dialect: str = DEFAULT_DIALECT

    def __post_init__(self) -> None:
        check_bounds(self.connections, self.duration, MAX_CONNECTIONS)
        if not self.ports or not all(0 < port < 65536 for port in self.ports):
            raise ValueError("at least one port, each in 1..65535")
        if self.rate < 0 or self.rate * self.duration > MAX_MESSAGES:
            raise ValueError(f"rate must be >= 0 and send at most {MAX_MESSAGES} messages")
        if self.senders < 1:
            raise ValueError("at least one sender")
        if not len(TEXT_PREFIX) + 8 <= self.message_bytes <= 4096:
            raise ValueError("message_bytes must be between 14 and 4096")
        if self.drain < 0:
            raise ValueError("drain can't be negative")
        if self.dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}")
        if self.dialect == "papaya" and self.messages * self.connections > MAX_PAPAYA_BITS:
            raise ValueError(
                f"messages x connections must be at most {MAX_PAPAYA_BITS} in the papaya dialect"
            )

    @property
    def messages(self) -> int:
        """How many messages the schedule holds."""
        return math.floor(self.rate * self.duration)

    def wire(self) -> Wire:
        """The dialect's wire."""
        return PapayaWire(self.messages) if self.dialect == "papaya" else NativeWire()


class ChatLoad:
    """The generator's state; `run` does the whole job."""

    def __init__(self, spec: ChatLoadSpec) -> None:
        self.spec = spec
        self.wire = spec.wire()
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
        #: When any client last received anything (see `_settle`).
        self.last_receipt = -math.inf

    # --- setting up ---------------------------------------------------------------------
    async def _join(self, index: int, limiter: trio.CapacityLimiter) -> None:
        """Connect client `index` and let it join; a failure is noted, not raised."""
        port = self.spec.ports[index % len(self.spec.ports)]
        async with limiter:
            try:
                stream = await trio.open_tcp_stream(self.spec.host, port)
            except OSError as exc:
                self.join_failures.append(f"client {index}: cannot connect: {exc}")
                return
            try:
                head, rest = await self.wire.join(stream, index, self.spec.key, index == 0)
            except (OSError, trio.BrokenResourceError, LoadError) as exc:
                await trio.aclose_forcefully(stream)
                self.join_failures.append(str(exc) or type(exc).__name__)
                return
        self.clients.append(Client(index, stream, head, rest))

    async def _join_all(self) -> None:
        limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)
        # The first client joins alone: in the papayaChat dialect it opens the room.
        await self._join(0, limiter)
        if not self.join_failures:
            async with trio.open_nursery() as nursery:
                for index in range(1, self.spec.connections):
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
        for number in self.wire.take(client, block, self.sent):
            self.delivered += 1
            self.histogram.add(now - self.sent_at[number])
        if self._expected is not None and self.delivered >= self._expected:
            self._all_delivered.set()

    async def _read(self, client: Client) -> None:
        pending = client.pending
        while True:
            end = self.wire.last_line_end(pending)
            if end >= 0:
                self._take(client, bytes(pending[: end + 1]), trio.current_time())
                del pending[: end + 1]
            elif len(pending) > MAX_LINE:
                client.errors += 1
                client.first_error = f"a line longer than {MAX_LINE} bytes"
                return
            try:
                chunk = await client.stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            if not chunk:
                client.closed_by_server = True
                return
            self.last_receipt = trio.current_time()
            pending += chunk

    # --- sending ------------------------------------------------------------------------
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
            sender = senders[number % len(senders)]
            line = self.wire.line(sender.index, number, self.spec.message_bytes)
            self.sent_at[number] = trio.current_time()
            self.sent = number + 1
            try:
                await sender.stream.send_all(line)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.send_failures += 1  # the server dropped the sender: its reader says so

    async def _settle(self) -> None:
        """Wait until nothing has arrived for `QUIET` seconds (at most `SETTLE_LIMIT`).

        What the joins set off is over by then: in trio mode every native join is announced
        to every member already in (presence), N**2 / 2 deliveries that would otherwise
        still be flowing while the server is measured.
        """
        step = QUIET / 5
        for _ in range(math.ceil(SETTLE_LIMIT / step)):
            if trio.current_time() >= self.last_receipt + QUIET:
                return
            await trio.sleep(step)

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
            async with trio.open_nursery() as nursery:
                for client in self.clients:
                    nursery.start_soon(self._read, client)
                self.last_receipt = trio.current_time()
                await self._settle()
                on_ready()
                cpu_before = time.process_time()
                start = trio.current_time()
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
            "dialect": spec.dialect,
            "ports": len(spec.ports),
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


def _ports(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of ports: {text!r}") from None


def _say_ready() -> None:
    print(json.dumps({"event": "ready"}), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 with a result line (flagged or not), 1 if the clients could not join."""
    parser = argparse.ArgumentParser(description="chat-room load generator for the bench")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=_ports, required=True, help="a port, or several, comma-separated"
    )
    parser.add_argument("--key-file", type=Path, required=True, help="the room's key file")
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of sending")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="messages/s, total")
    parser.add_argument("--senders", type=int, default=DEFAULT_SENDERS)
    parser.add_argument("--message-bytes", type=int, default=DEFAULT_MESSAGE_BYTES)
    parser.add_argument("--drain", type=float, default=DEFAULT_DRAIN)
    parser.add_argument("--dialect", choices=DIALECTS, default=DEFAULT_DIALECT)
    ns = parser.parse_args(argv)
    try:
        spec = ChatLoadSpec(
            ports=ns.port,
            key=ns.key_file.read_text().strip(),
            connections=ns.connections,
            duration=ns.duration,
            rate=ns.rate,
            senders=ns.senders,
            message_bytes=ns.message_bytes,
            drain=ns.drain,
            host=ns.host,
            dialect=ns.dialect,
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
