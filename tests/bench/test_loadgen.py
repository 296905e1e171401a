"""The load generator achieves the rate it is asked for, against a real sink."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from papaya_trio.bench.deployment import running_server
from papaya_trio.bench.loadgen import LoadSpec, run_load
from papaya_trio.bench.servers import sink_spec


@pytest.mark.parametrize(("connections", "rate_bits"), [(2, 1e6), (4, 4e6)])
async def test_achieved_rate_matches_the_requested_rate(
    connections: int, rate_bits: float, tmp_path: Path
) -> None:
    cpus = frozenset(os.sched_getaffinity(0))
    async with running_server(sink_spec("trio"), cpus, tmp_path) as (
        _pid,
        port,
    ):
        spec = LoadSpec(port=port, connections=connections, duration=1.5, rate_bits=rate_bits)
        with trio.fail_after(20):
            result = await run_load(spec)
    assert len(result.rates_bits) == connections
    for rate in result.rates_bits:
        assert rate == pytest.approx(rate_bits, rel=0.05)
    assert result.bytes_sent % 8 == 0  # whole messages only
    assert not result.flagged, result.flag_reason
    assert 0 < result.cpu_seconds < result.duration


def test_spec_is_bounded() -> None:
    with pytest.raises(ValueError, match="connections"):
        LoadSpec(port=1, connections=0, duration=1)
    with pytest.raises(ValueError, match="duration"):
        LoadSpec(port=1, connections=1, duration=10_000)


async def test_a_generator_that_cannot_keep_up_is_flagged() -> None:
    # A server that accepts and never reads: once the kernel's buffers (a few MB) are full the
    # generator cannot send at all, far short of 1 Gbit/s (62.5 MB in the half second).
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    accepted: list[trio.SocketStream] = []

    async def accept_and_hold() -> None:
        while True:
            accepted.append(await listener.accept())

    async with listener, trio.open_nursery() as nursery:
        nursery.start_soon(accept_and_hold)
        spec = LoadSpec(port=port, connections=1, duration=0.5, rate_bits=1e9)
        with trio.fail_after(20):
            result = await run_load(spec)
        nursery.cancel_scope.cancel()
    for stream in accepted:
        await trio.aclose_forcefully(stream)
    assert result.flagged
    assert "slowest connection" in result.flag_reason
