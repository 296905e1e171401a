"""A keyless flood from many loopback addresses, and a member's connect-to-welcome latency
meanwhile, on real sockets.

Every flood socket binds to one of 127.0.0.2 ... 127.0.0.200 (all loopback on Linux), sends `{`
(the start of a native hello) and then nothing, and reconnects as soon as the server drops
it. Meanwhile a member connects from 127.0.0.1 again and again, says hello and times its
welcome. Used by tests/test_limits_real.py; run it for the figures in docs/security.md:

    python -m tests.flood --port 7722 --key-file papaya-data/key --sockets 1100 --attempts 200

Bounds: every loop runs at most `MAX_ROUNDS` times and within the caller's deadline.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import trio

HOST = "127.0.0.1"
FLOOD_ADDRESSES = [f"127.0.0.{n}" for n in range(2, 201)]
MAX_ROUNDS = 100_000
WELCOME_TIMEOUT = 10.0
READ_BYTES = 4096


@dataclass
class FloodStats:
    """What the flood did: connections made, and how many the server dropped. `warm` is set
    once `warmup` connections were made."""

    warmup: int
    connects: int = 0
    dropped: int = 0
    connect_errors: int = 0
    warm: trio.Event = field(default_factory=trio.Event)


@dataclass
class Latencies:
    """The member's attempts: seconds from connect to welcome, and the failures."""

    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def percentile(self, share: float) -> float:
        """The `share` quantile (nearest rank) of the successful attempts."""
        ordered = sorted(self.seconds)
        return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


async def connect_from(source: str, port: int) -> trio.SocketStream:
    """A TCP connection to the server on `port` from the loopback address `source`."""
    sock = trio.socket.socket()
    connected = False
    try:
        await sock.bind((source, 0))
        await sock.connect((HOST, port))
        connected = True
    finally:
        if not connected:  # failed or cancelled: the socket must not leak
            sock.close()
    return trio.SocketStream(sock)


async def flood_socket(port: int, source: str, stats: FloodStats) -> None:
    """Connect from `source`, send `{`, wait to be dropped, again; until cancelled."""
    for _ in range(MAX_ROUNDS):
        try:
            stream = await connect_from(source, port)
        except OSError:
            stats.connect_errors += 1
            await trio.sleep(0.01)
            continue
        stats.connects += 1
        if stats.connects >= stats.warmup:
            stats.warm.set()
        try:
            await stream.send_all(b"{")
            while await stream.receive_some(READ_BYTES):
                pass
        except (trio.BrokenResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)
        stats.dropped += 1


async def welcome_latency(port: int, key: str, user: str) -> float:
    """Seconds from starting to connect to reading the welcome; raises if there is none."""
    start = trio.current_time()
    with trio.fail_after(WELCOME_TIMEOUT):
        stream = await trio.open_tcp_stream(HOST, port)
        try:
            hello = {"type": "hello", "key": key, "user": user}
            await stream.send_all(json.dumps(hello).encode() + b"\n")
            data = b""
            while b"\n" not in data:
                chunk = await stream.receive_some(READ_BYTES)
                if not chunk:
                    raise ConnectionError(f"closed before the welcome: {data!r}")
                data += chunk
        finally:
            await trio.aclose_forcefully(stream)
    reply = json.loads(data.partition(b"\n")[0])
    if reply.get("type") != "welcome":
        raise ConnectionError(f"refused: {reply}")
    return trio.current_time() - start


async def measure_under_flood(
    port: int, key: str, *, sockets: int, attempts: int, warmup: int, pause: float
) -> tuple[Latencies, FloodStats]:
    """Start `sockets` flood sockets, wait until they made `warmup` connections, then time
    `attempts` member connections `pause` seconds apart; stop the flood and return both."""
    stats = FloodStats(warmup)
    latencies = Latencies()
    async with trio.open_nursery() as nursery:
        for index in range(sockets):
            source = FLOOD_ADDRESSES[index % len(FLOOD_ADDRESSES)]
            nursery.start_soon(flood_socket, port, source, stats)
        with trio.move_on_after(WELCOME_TIMEOUT):
            await stats.warm.wait()
        for number in range(attempts):
            try:
                latencies.seconds.append(await welcome_latency(port, key, f"m{number}"))
            except (OSError, trio.BrokenResourceError, trio.TooSlowError, ValueError) as exc:
                latencies.failures.append(f"{type(exc).__name__}: {exc}")
            await trio.sleep(pause)
        nursery.cancel_scope.cancel()
    return latencies, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key-file", type=Path, required=True)
    parser.add_argument("--sockets", type=int, default=1100)
    parser.add_argument("--attempts", type=int, default=200)
    parser.add_argument("--pause", type=float, default=0.05)
    ns = parser.parse_args()
    key = ns.key_file.read_text().strip()
    latencies, stats = trio.run(
        lambda: measure_under_flood(
            ns.port,
            key,
            sockets=ns.sockets,
            attempts=ns.attempts,
            warmup=ns.sockets,
            pause=ns.pause,
        )
    )
    ok = len(latencies.seconds)
    result = {
        "attempts": ns.attempts,
        "welcomed": ok,
        "failures": latencies.failures[:5],
        "p50_ms": 1000 * latencies.percentile(0.5) if ok else None,
        "p99_ms": 1000 * latencies.percentile(0.99) if ok else None,
        "max_ms": 1000 * max(latencies.seconds) if ok else None,
        "flood_connects": stats.connects,
        "flood_dropped": stats.dropped,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
