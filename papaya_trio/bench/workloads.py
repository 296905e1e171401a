"""The profiles' workloads: which load generator a trial runs, and the figures it yields.

The runner is the same for every profile (server, generator, sampler, deadlines); a
`Workload` supplies what differs:

- `prepare`: set up the trial's room folder before the server starts (the chat profile
  writes the room's key there, so the generator knows it);
- `generator_argv`: the load generator's command line;
- `figures`: the profile's own figures of one trial, from the generator's JSON result and
  the server CPU the sampler measured, as a flat dict of numbers;
- `reducers`: how each figure is aggregated over repeats (mean, max, sum...).

`PaperWorkload` drives `loadgen` (the paper's `message\\n` streams); `ChatWorkload` drives
`chatload` (a chat room with fan-out). `SweepConfig` is a whole sweep: servers, workload,
connection counts (and, for the chat profile, message rates), timing, and the nodes' CPU
quota. This module imports neither psutil nor matplotlib, so the
command line can be built without the bench's optional dependencies.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

from papaya_trio.bench import chatload, loadgen, stats
from papaya_trio.bench.servers import ServerSpec
from papaya_trio.keys import generate_key, write_key

Reducer = Callable[[Sequence[float]], float]
#: The paper's sweep: connection counts and seconds per trial.
PAPER_CONNECTIONS = (1, 2, 4, 8, 16, 32, 64)
PAPER_DURATION = 60.0
#: The chat profile's default sweep (fork mode goes as far as the machine lets it).
CHAT_CONNECTIONS = (16, 64, 256, 1000)
CHAT_DURATION = 20.0
DEFAULT_WARMUP = 2.0
DEFAULT_INTERVAL = 0.5
#: Seconds of fixed-loop host check before each N and repeat (see `steadiness`).
DEFAULT_HOST_CHECK = 5.0
#: Longest wait for the generator's clients to join, before the per-connection allowance.
READY_TIMEOUT = 30.0
#: Extra joining time per connection (fork mode forks two processes per client).
READY_PER_CONNECTION = 0.02
#: Extra joining time per pair of connections: trio mode announces every native join to
#: every member already in (presence), so N joins cost about N**2 / 2 deliveries.
READY_PER_PAIR = 1e-4
#: The longest wait for the clients to join, whatever N.
READY_LIMIT = 600.0
#: The chat profile calls a point sustained when its p99 delivery latency is within this.
SUSTAINED_P99_MS = 1000.0
#: And a message rate sustained (for the rates summary, issue 15's bound) within this.
RATE_SUSTAINED_P99_MS = 100.0
#: The most message rates one chat sweep may step through.
MAX_RATES = 32


class Workload(Protocol):
    """What a profile's load generator is and what its results mean."""

    profile: ClassVar[str]
    max_connections: ClassVar[int]
    reducers: ClassVar[Mapping[str, Reducer]]

    @property
    def drain(self) -> float:
        """Seconds the generator may go on after its sending window."""

    def prepare(self, data_dir: Path) -> None:
        """Set up the trial's room folder before the server starts."""

    def generator_argv(
        self, ports: Sequence[int], connections: int, seconds: float, data_dir: Path
    ) -> list[str]:
        """The generator's command line: `connections` clients of the server's `ports` (one
        per node) loading for `seconds`."""

    def figures(
        self, load: Mapping[str, object], cpu_percent: float, redis_cpu_percent: float | None
    ) -> dict[str, float]:
        """The profile's figures of one trial; `redis_cpu_percent` is that of the nodes'
        Redis, when they share one."""


def ready_timeout(connections: int) -> float:
    """How long a generator may take to open `connections` connections and let the room
    settle (`chatload.SETTLE_LIMIT`)."""
    allowance = READY_PER_CONNECTION * connections + READY_PER_PAIR * connections**2
    return min(READY_LIMIT, READY_TIMEOUT + allowance) + chatload.SETTLE_LIMIT


def number(value: object) -> float:
    """A JSON number as a float (0.0 for anything else)."""
    return float(value) if isinstance(value, int | float) else 0.0


def _minimum(values: Sequence[float]) -> float:
    return min(values)


def _maximum(values: Sequence[float]) -> float:
    return max(values)


def _total(values: Sequence[float]) -> float:
    return math.fsum(values)


@dataclass(frozen=True)
class PaperWorkload:
    """The paper's load: every connection streams ``message\\n`` at `rate_bits`."""

    profile: ClassVar[str] = "paper"
    max_connections: ClassVar[int] = loadgen.MAX_CONNECTIONS
    reducers: ClassVar[Mapping[str, Reducer]] = {
        "load_cpu_percent": stats.mean,
        "achieved_rate_bits": stats.mean,
    }
    rate_bits: float = loadgen.DEFAULT_RATE_BITS
    tick: float = loadgen.DEFAULT_TICK

    @property
    def drain(self) -> float:
        """The sinks answer nothing: the generator stops when its window ends."""
        return 0.0

    def prepare(self, data_dir: Path) -> None:
        """The sinks keep no state."""

    def generator_argv(
        self, ports: Sequence[int], connections: int, seconds: float, data_dir: Path
    ) -> list[str]:
        """`loadgen` at this workload's rate and tick (the sinks run as one node)."""
        (port,) = ports
        return [
            sys.executable,
            "-m",
            "papaya_trio.bench.loadgen",
            f"--port={port}",
            f"--connections={connections}",
            f"--duration={seconds}",
            f"--rate-bits={self.rate_bits}",
            f"--tick={self.tick}",
        ]

    def figures(
        self, load: Mapping[str, object], cpu_percent: float, redis_cpu_percent: float | None
    ) -> dict[str, float]:
        """The generator's own CPU and the rate it achieved per connection."""
        return {
            "load_cpu_percent": number(load.get("cpu_percent")),
            "achieved_rate_bits": number(load.get("mean_rate_bits")),
        }


@dataclass(frozen=True)
class ChatWorkload:
    """A chat room: `rate` messages per second in total from `senders` clients, to all, in
    the native dialect or the papayaChat one (`dialect`)."""

    profile: ClassVar[str] = "chat"
    max_connections: ClassVar[int] = chatload.MAX_CONNECTIONS
    reducers: ClassVar[Mapping[str, Reducer]] = {
        "load_cpu_percent": stats.mean,
        "achieved_rate": stats.mean,
        "deliveries_per_second": stats.mean,
        "cpu_us_per_delivery": stats.mean,
        "redis_cpu_percent": stats.mean,
        "redis_us_per_delivery": stats.mean,
        "latency_p50_ms": stats.mean,
        "latency_p99_ms": stats.mean,
        "latency_max_ms": _maximum,
        "lost": _total,
        "errors": _total,
        "sustained": _minimum,
        "rate_sustained": _minimum,
    }
    rate: float = chatload.DEFAULT_RATE
    senders: int = chatload.DEFAULT_SENDERS
    message_bytes: int = chatload.DEFAULT_MESSAGE_BYTES
    drain_seconds: float = chatload.DEFAULT_DRAIN
    dialect: str = chatload.DEFAULT_DIALECT

    @property
    def drain(self) -> float:
        """Time for the last deliveries after the sending window."""
        return self.drain_seconds

    def prepare(self, data_dir: Path) -> None:
        """A fresh room: a new key, owner-only, where the server looks for it."""
        data_dir.mkdir(mode=0o700, parents=True)
        write_key(data_dir / "key", generate_key())

    def generator_argv(
        self, ports: Sequence[int], connections: int, seconds: float, data_dir: Path
    ) -> list[str]:
        """`chatload` with this workload's rate, senders, message size and dialect, its
        clients spread over the nodes' ports."""
        return [
            sys.executable,
            "-m",
            "papaya_trio.bench.chatload",
            f"--port={','.join(map(str, ports))}",
            f"--key-file={data_dir / 'key'}",
            f"--connections={connections}",
            f"--duration={seconds}",
            f"--rate={self.rate}",
            f"--senders={self.senders}",
            f"--message-bytes={self.message_bytes}",
            f"--drain={self.drain_seconds}",
            f"--dialect={self.dialect}",
        ]

    def figures(
        self, load: Mapping[str, object], cpu_percent: float, redis_cpu_percent: float | None
    ) -> dict[str, float]:
        """Delivery rate, latency, losses, and the server CPU spent per delivered message
        (all nodes together), with Redis's apart.

        Latency figures are absent when nothing was delivered (an idle room).
        """
        deliveries = number(load.get("deliveries_per_second"))
        lost = number(load.get("lost"))
        errors = number(load.get("errors")) + number(load.get("dropped_connections"))
        achieved = number(load.get("achieved_rate"))
        short = achieved < (1 - chatload.DEFAULT_TOLERANCE) * number(load.get("requested_rate"))
        result = {
            "load_cpu_percent": number(load.get("cpu_percent")),
            "achieved_rate": achieved,
            "deliveries_per_second": deliveries,
            "lost": lost,
            "errors": errors,
        }
        if deliveries:
            result["cpu_us_per_delivery"] = 1e4 * cpu_percent / deliveries
        if redis_cpu_percent is not None:
            result["redis_cpu_percent"] = redis_cpu_percent
            if deliveries:
                result["redis_us_per_delivery"] = 1e4 * redis_cpu_percent / deliveries
        for name in ("latency_p50_ms", "latency_p99_ms", "latency_max_ms"):
            if isinstance(value := load.get(name), int | float):
                result[name] = float(value)
        p99 = result.get("latency_p99_ms", 0.0)
        ok = not lost and not errors and not short and p99 <= SUSTAINED_P99_MS
        result["sustained"] = float(ok)
        result["rate_sustained"] = float(ok and p99 <= RATE_SUSTAINED_P99_MS)
        return result


@dataclass(frozen=True)
class SweepConfig:
    """What to run."""

    servers: tuple[ServerSpec, ...]
    workload: Workload
    connections: tuple[int, ...] = PAPER_CONNECTIONS
    duration: float = PAPER_DURATION
    warmup: float = DEFAULT_WARMUP
    interval: float = DEFAULT_INTERVAL
    repeat: int = 1
    pin: bool = True
    #: Seconds of host check (see `steadiness`) before each N and repeat; 0: none.
    host_check: float = DEFAULT_HOST_CHECK
    #: Chat profile: the message rates to step through (the sweep's outermost loop); empty:
    #: the workload's own.
    rates: tuple[float, ...] = ()
    #: Each server node's CPU quota, as a fraction of one CPU (`cpuquota`); None: no quota.
    node_cpu: float | None = None

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("no server to measure")
        if len({s.name for s in self.servers}) != len(self.servers):
            raise ValueError("two servers have the same name")
        limit = self.workload.max_connections
        if not self.connections or not all(1 <= n <= limit for n in self.connections):
            raise ValueError(f"connection counts must be in 1..{limit}")
        if self.repeat < 1:
            raise ValueError("repeat must be at least 1")
        if self.duration < 2 * self.interval:
            raise ValueError("duration must cover at least two sampling intervals")
        if self.warmup < 0:
            raise ValueError("warm-up can't be negative")
        if self.host_check and self.host_check < 2 * self.interval:
            raise ValueError("a host check must cover at least two sampling intervals (or be 0)")
        if self.rates and not isinstance(self.workload, ChatWorkload):
            raise ValueError("a list of message rates belongs to the chat profile")
        if len(self.rates) > MAX_RATES or len(set(self.rates)) != len(self.rates):
            raise ValueError(f"at most {MAX_RATES} message rates, each given once")

    def workload_at(self, rate: float | None) -> Workload:
        """The workload of a trial at message rate `rate` (None: the workload as it is)."""
        if rate is None:
            return self.workload
        assert isinstance(self.workload, ChatWorkload)  # __post_init__ says so
        return dataclasses.replace(self.workload, rate=rate)

    @property
    def load_seconds(self) -> float:
        """How long the generator loads: warm-up, the measured window, two intervals' slack."""
        return self.warmup + self.duration + 2 * self.interval
