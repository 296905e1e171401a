"""The chat load generator against a real trio-mode server: deliveries, losses, idling."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from papaya_trio.bench.chatload import QUIET, SETTLE_LIMIT, ChatLoad, ChatLoadSpec, LoadError
from papaya_trio.bench.deployment import running_server
from papaya_trio.bench.servers import chat_spec
from papaya_trio.bench.workloads import ChatWorkload

CPUS = frozenset(os.sched_getaffinity(0))


async def run_room(
    tmp_path: Path,
    connections: int,
    duration: float,
    rate: float,
    senders: int = 1,
    mode: str = "trio",
    dialect: str = "native",
) -> dict[str, object]:
    ChatWorkload().prepare(tmp_path / "data")
    key = (tmp_path / "data" / "key").read_text().strip()
    async with running_server(chat_spec(mode, "never", 64), CPUS, tmp_path) as (_pid, port):
        spec = ChatLoadSpec((port,), key, connections, duration, rate, senders, dialect=dialect)
        with trio.fail_after(60):
            return await ChatLoad(spec).run(lambda: None)


@pytest.mark.parametrize(
    ("mode", "dialect"), [("trio", "native"), ("trio", "papaya"), ("fork", "papaya")]
)
async def test_every_client_receives_every_message(tmp_path: Path, mode: str, dialect: str) -> None:
    result = await run_room(tmp_path, 4, 1.0, rate=40, senders=2, mode=mode, dialect=dialect)
    assert result["dialect"] == dialect
    # The pacer sends the messages whose slots fall in the 1 s window: all 40, or on a
    # machine so busy that the last slot passes unseen, one fewer (never short enough to flag).
    sent = result["sent"]
    assert sent in (39, 40)
    assert result["delivered"] == 4 * sent  # every client got every message sent
    assert result["lost"] == 0 and result["out_of_order"] == 0
    assert not result["flagged"], result["flag_reason"]
    p50, p99, worst = (result[k] for k in ("latency_p50_ms", "latency_p99_ms", "latency_max_ms"))
    assert isinstance(p50, float) and isinstance(p99, float) and isinstance(worst, float)
    assert 0 < p50 <= p99 <= worst < 1000


async def test_rate_zero_holds_idle_connections(tmp_path: Path) -> None:
    result = await run_room(tmp_path, connections=3, duration=0.3, rate=0)
    assert (result["connections"], result["sent"], result["delivered"]) == (3, 0, 0)
    assert result["latency_p99_ms"] is None
    assert not result["flagged"], result["flag_reason"]


async def test_a_wrong_key_is_a_load_error(tmp_path: Path) -> None:
    ChatWorkload().prepare(tmp_path / "data")
    async with running_server(chat_spec("trio", "never", 64), CPUS, tmp_path) as (_pid, port):
        spec = ChatLoadSpec(ports=(port,), key="x" * 128, connections=2, duration=1)
        with trio.fail_after(30), pytest.raises(LoadError, match=r"client 0: refused.*bad_key"):
            await ChatLoad(spec).run(lambda: None)


def test_spec_is_bounded() -> None:
    with pytest.raises(ValueError, match="connections"):
        ChatLoadSpec(ports=(1,), key="k", connections=30_000, duration=1)
    with pytest.raises(ValueError, match="rate"):
        ChatLoadSpec(ports=(1,), key="k", connections=1, duration=3600, rate=1000)


async def test_papaya_dialect_wrong_key_is_a_closed_socket(tmp_path: Path) -> None:
    ChatWorkload().prepare(tmp_path / "data")
    async with running_server(chat_spec("trio", "never", 64), CPUS, tmp_path) as (_pid, port):
        spec = ChatLoadSpec((port,), "x" * 128, 2, 1, dialect="papaya")
        with trio.fail_after(30), pytest.raises(LoadError, match="client 0: closed by the server"):
            await ChatLoad(spec).run(lambda: None)


def test_papaya_spec_needs_a_full_key_and_bounds_its_bitmaps() -> None:
    with pytest.raises(ValueError, match="messages x connections"):
        ChatLoadSpec((1,), "k" * 128, 20_000, 3600, rate=200, dialect="papaya")
    with pytest.raises(ValueError, match="dialect"):
        ChatLoadSpec((1,), "k", 1, 1, dialect="irc")
    with pytest.raises(ValueError, match="port"):
        ChatLoadSpec((), "k", 1, 1)


async def traffic(load: ChatLoad, every: float, until: float) -> None:
    """Something arrives every `every` seconds until `until` (trio time)."""
    while trio.current_time() < until:
        load.last_receipt = trio.current_time()
        await trio.sleep(every)


async def test_the_room_settles_once_the_joins_traffic_is_over(autojump_clock: object) -> None:
    load = ChatLoad(ChatLoadSpec((1,), "k", 1, 1.0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(traffic, load, 0.2, 2.0)
        load.last_receipt = trio.current_time()
        await load._settle()
        settled = trio.current_time()
    # The last arrival was at 1.8 s (or 2.0 s): quiet for QUIET seconds after it, looked at
    # every fifth of QUIET.
    assert 1.8 + QUIET <= settled <= 2.0 + 1.2 * QUIET


async def test_a_room_that_never_settles_is_waited_for_a_bounded_time(
    autojump_clock: object,
) -> None:
    load = ChatLoad(ChatLoadSpec((1,), "k", 1, 1.0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(traffic, load, 0.1, 10 * SETTLE_LIMIT)
        load.last_receipt = trio.current_time()
        await load._settle()
        assert trio.current_time() == pytest.approx(SETTLE_LIMIT)
        nursery.cancel_scope.cancel()
