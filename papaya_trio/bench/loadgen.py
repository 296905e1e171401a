"""The load generator: N connections, each sending ``message\\n`` at a paced rate.

It stands in for tcpkali (not packaged here). Each connection has its own task and token
bucket: every `tick` seconds the bucket gains ``rate * elapsed`` bytes (capped at two ticks'
worth, so a generator that fell behind does not catch up in bursts) and the task sends as
many whole 8-byte messages as the bucket holds. Task phases are spread evenly over one tick
so the server sees a steady stream rather than N-wide bursts.

It measures itself: bytes actually sent, the achieved rate per connection and its own CPU
time. A run is *flagged* when any connection fell short of the requested rate by more than
the tolerance, or when the generator used most of its CPU; the runner reports such a run as
unreliable instead of silently trusting it.

Bounds: at most `MAX_CONNECTIONS` connections and `MAX_DURATION` seconds; each task runs at
most ``duration / tick + 1`` rounds. Loopback only unless the caller passes another host.
Run: ``python -m papaya_trio.bench.loadgen --port PORT --connections 4 --duration 5``;
prints one JSON line ``{"event": "ready"}`` once every connection is open, then one JSON
line with the result.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import trio

MESSAGE = b"message\n"
DEFAULT_RATE_BITS = 1_000_000
DEFAULT_TICK = 0.01
MAX_CONNECTIONS = 4096
MAX_DURATION = 3600.0
#: A connection is short when it achieved less than (1 - tolerance) of the requested rate.
DEFAULT_TOLERANCE = 0.05
#: Above this share of one core, the generator itself is the bottleneck.
CPU_SATURATION = 0.9


def check_bounds(connections: int, duration: float, max_connections: int) -> None:
    """Raise ValueError unless a generator's connections and duration are within bounds."""
    if not 1 <= connections <= max_connections:
        raise ValueError(f"connections must be between 1 and {max_connections}")
    if not 0 < duration <= MAX_DURATION:
        raise ValueError(f"duration must be in (0, {MAX_DURATION}] seconds")


@dataclass(frozen=True)
class LoadSpec:
    """What to send: where, how many connections, how fast and for how long."""

    port: int
    connections: int
    duration: float
    host: str = "127.0.0.1"
    rate_bits: float = DEFAULT_RATE_BITS
    tick: float = DEFAULT_TICK
    tolerance: float = DEFAULT_TOLERANCE

    def __post_init__(self) -> None:
        check_bounds(self.connections, self.duration, MAX_CONNECTIONS)
        if self.rate_bits <= 0 or self.tick <= 0:
            raise ValueError("rate and tick must be positive")

    @property
    def rate_bytes(self) -> float:
        """Requested rate per connection, bytes per second."""
        return self.rate_bits / 8


@dataclass(frozen=True)
class LoadResult:
    """What the generator actually did."""

    connections: int
    duration: float
    requested_rate_bits: float
    bytes_sent: int
    #: Achieved rate of each connection, bits per second.
    rates_bits: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    flagged: bool = False
    flag_reason: str = ""

    @property
    def mean_rate_bits(self) -> float:
        """Mean achieved rate per connection, bits per second."""
        return sum(self.rates_bits) / len(self.rates_bits) if self.rates_bits else 0.0

    @property
    def cpu_percent(self) -> float:
        """The generator's own CPU use, % of one core."""
        return 100 * self.cpu_seconds / self.duration if self.duration else 0.0

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict, with the derived figures included."""
        data = asdict(self)
        data["mean_rate_bits"] = self.mean_rate_bits
        data["cpu_percent"] = self.cpu_percent
        return data


async def _drive(
    stream: trio.SocketStream,
    spec: LoadSpec,
    start: float,
    phase: float,
    payload: memoryview,
    sent: list[int],
    index: int,
) -> None:
    rate = spec.rate_bytes
    burst = 2 * rate * spec.tick
    end = start + spec.duration
    tokens = 0.0
    last = start
    next_wake = start + phase
    # A server that stops reading must not hold the run past its duration: the blocked send
    # is abandoned (and not counted), so the shortfall shows in the achieved rate.
    with trio.move_on_at(end + spec.tick):
        for _ in range(math.ceil(spec.duration / spec.tick) + 1):
            await trio.sleep_until(min(next_wake, end))
            now = trio.current_time()
            if now >= end:
                # Credit the tokens earned up to the end, so the last partial tick counts.
                now = end
            tokens = min(tokens + (now - last) * rate, burst)
            last = now
            whole = int(tokens) // len(MESSAGE) * len(MESSAGE)
            if whole:
                await stream.send_all(payload[:whole])
                tokens -= whole
                sent[index] += whole
            if now >= end:
                return
            next_wake += spec.tick


async def run_load(
    spec: LoadSpec, *, task_status: trio.TaskStatus[float] = trio.TASK_STATUS_IGNORED
) -> LoadResult:
    """Open the connections, report readiness, send for `spec.duration`, then close.

    `task_status.started()` gets the trio time at which sending starts (every connection
    is open by then).
    """
    burst_bytes = math.ceil(2 * spec.rate_bytes * spec.tick) + len(MESSAGE)
    payload = memoryview(MESSAGE * (burst_bytes // len(MESSAGE) + 1))
    sent = [0] * spec.connections
    streams: list[trio.SocketStream] = []
    try:
        for _ in range(spec.connections):
            streams.append(await trio.open_tcp_stream(spec.host, spec.port))
        cpu_before = time.process_time()
        start = trio.current_time()
        task_status.started(start)
        async with trio.open_nursery() as nursery:
            for index, stream in enumerate(streams):
                phase = spec.tick * index / spec.connections
                nursery.start_soon(_drive, stream, spec, start, phase, payload, sent, index)
        cpu_seconds = time.process_time() - cpu_before
        elapsed = trio.current_time() - start
    finally:
        for stream in streams:
            await stream.aclose()
    return _judge(spec, sent, cpu_seconds, elapsed)


def _judge(spec: LoadSpec, sent: list[int], cpu_seconds: float, elapsed: float) -> LoadResult:
    rates = [8 * n / spec.duration for n in sent]
    reasons = []
    slowest = min(rates)
    if slowest < (1 - spec.tolerance) * spec.rate_bits:
        reasons.append(
            f"slowest connection sent {slowest / 1e6:.3f} Mbit/s"
            f" of {spec.rate_bits / 1e6:.3f} requested"
        )
    if cpu_seconds > CPU_SATURATION * elapsed:
        reasons.append(f"load generator used {100 * cpu_seconds / elapsed:.0f}% of a core")
    return LoadResult(
        connections=spec.connections,
        duration=spec.duration,
        requested_rate_bits=spec.rate_bits,
        bytes_sent=sum(sent),
        rates_bits=rates,
        cpu_seconds=cpu_seconds,
        flagged=bool(reasons),
        flag_reason="; ".join(reasons),
    )


async def _main_with_ready(spec: LoadSpec) -> LoadResult:
    async with trio.open_nursery() as nursery:
        result_box: list[LoadResult] = []

        async def run_and_keep(task_status: trio.TaskStatus[float]) -> None:
            result_box.append(await run_load(spec, task_status=task_status))

        await nursery.start(run_and_keep)
        print(json.dumps({"event": "ready"}), flush=True)
    return result_box[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exits 0 even when flagged (the flag is in the JSON result)."""
    parser = argparse.ArgumentParser(description="paced TCP load generator for the bench")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of sending")
    parser.add_argument(
        "--rate-bits", type=float, default=DEFAULT_RATE_BITS, help="per connection, bit/s"
    )
    parser.add_argument("--tick", type=float, default=DEFAULT_TICK, help="pacing period, s")
    ns = parser.parse_args(argv)
    try:
        spec = LoadSpec(
            port=ns.port,
            connections=ns.connections,
            duration=ns.duration,
            host=ns.host,
            rate_bits=ns.rate_bits,
            tick=ns.tick,
        )
    except ValueError as exc:
        parser.error(str(exc))
    result = trio.run(_main_with_ready, spec)
    print(json.dumps({"event": "result", **result.to_json()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
