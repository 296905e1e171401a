"""K server nodes sharing one Redis, as the bench deploys them: one room, clients spread."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import trio

from papaya_trio.bench.chatload import ChatLoad, ChatLoadSpec
from papaya_trio.bench.deployment import deploy
from papaya_trio.bench.sampler import ProcessTreeSampler, interval
from papaya_trio.bench.servers import chat_spec
from papaya_trio.bench.workloads import ChatWorkload

CPUS = frozenset(os.sched_getaffinity(0))


def clients_of(pid: int, port: int) -> int:
    """Established connections that process `pid` holds on its `port`."""
    return sum(
        1
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
    )


async def test_two_nodes_serve_one_room_with_the_clients_spread_evenly(tmp_path: Path) -> None:
    ChatWorkload().prepare(tmp_path / "data")
    key = (tmp_path / "data" / "key").read_text().strip()
    spec = chat_spec("trio", "always", 64, store="redis", nodes=2)
    async with deploy(spec, [CPUS, CPUS], CPUS, tmp_path) as deployment:
        assert deployment.redis is not None and len(set(deployment.ports)) == 2
        nodes = list(zip(deployment.server.roots, deployment.ports, strict=True))
        spread: list[int] = []

        def count_clients() -> None:
            spread.extend(clients_of(pid, port) for pid, port in nodes)

        redis = ProcessTreeSampler(deployment.redis, CPUS)
        before = redis.snapshot(trio.current_time())
        load = ChatLoadSpec(deployment.ports, key, connections=6, duration=1.0, rate=30, senders=3)
        with trio.fail_after(60):
            result = await ChatLoad(load).run(count_clients)
        after = redis.snapshot(trio.current_time())
        roots = [*deployment.server.roots, *deployment.redis.roots]
        processes = [psutil.Process(pid) for pid in roots]
    assert spread == [3, 3]
    # Three senders, two nodes: messages entered through both, every client got every one.
    assert (result["sent"], result["delivered"], result["lost"]) == (30, 6 * 30, 0)
    assert result["out_of_order"] == 0 and not result["flagged"], result["flag_reason"]
    assert interval(before, after).cpu_percent > 0  # Redis worked, and is measured apart
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes)
