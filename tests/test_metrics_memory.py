"""Metrics of the whole server over memory streams, under trio's autojump clock; the
`metrics` option."""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from papaya_trio.chatlog import ChatLog
from papaya_trio.cli import build_parser
from papaya_trio.config import ConfigError, ServerConfig, load_config
from papaya_trio.metrics import Metrics
from papaya_trio.room import Room, RoomSettings
from papaya_trio.server import MAX_SCRAPES, ChatServer
from papaya_trio.storage import MemoryStorage
from papaya_trio.transports.websocket import WebSocketSettings
from tests.memory_world import KEY, LineClient, MemoryListener, open_world, trio_clock_ms
from tests.metrics_scrape import CountingStream, Samples, parse, read_to_end, value
from tests.web.ws_world import open_web_world, upgrade_request

FSYNC_DELAY = 0.03


def config_from(argv: list[str]) -> ServerConfig:
    return load_config(build_parser().parse_args(["serve", *argv]))


def samples_of(metrics: Metrics) -> Samples:
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    return parse(body.decode())


class SlowDisk(MemoryStorage):
    """A disk whose fsync takes FSYNC_DELAY seconds of (mock) time."""

    async def sync(self) -> None:
        await trio.sleep(FSYNC_DELAY)
        await super().sync()


async def test_counts_after_a_known_sequence(autojump_clock: trio.testing.MockClock) -> None:
    pair = partial(trio.testing.lockstep_stream_pair)
    async with open_world(make_pair=pair, max_lag=20) as world:
        metrics = world.room.metrics
        alice, _ = await world.join("alice")
        papaya = await world.connect()
        await papaya.send_raw(KEY.encode() + b"carol: hi\n")
        [carols] = await alice.messages(1)
        assert carols["text"] == "hi"
        wrong = await world.connect()
        await wrong.send(type="hello", key="x" * 128, user="mallory")
        assert (await wrong.expect("error"))["code"] == "bad_key"
        silent = await world.connect()
        await silent.send_raw(b"{")  # the native dialect, and then nothing
        assert (await silent.expect("error"))["code"] == "auth_timeout"
        await trio.testing.wait_all_tasks_blocked()
        before = samples_of(metrics)
        await papaya.stream.aclose()
        stuck, _ = await world.join("stuck")
        assert [m["text"] for m in await stuck.messages(1)] == ["hi"]  # then never reads again
        for i in range(30):
            await alice.chat(f"m{i}")
            if i == 9:  # stuck's send task is blocked writing m0; alice keeps up
                assert value(samples_of(metrics), "papaya_send_backlog_messages") == 10.0
        await trio.testing.wait_all_tasks_blocked()
        after = samples_of(metrics)
    assert value(before, "papaya_connections", transport="tcp", dialect="native") == 1.0
    assert value(before, "papaya_connections", transport="tcp", dialect="papaya") == 1.0
    assert value(before, "papaya_handshakes_refused_total", reason="bad_key") == 1.0
    assert value(before, "papaya_handshakes_refused_total", reason="auth_timeout") == 1.0
    assert value(before, "papaya_messages_stored_total") == 1.0
    assert value(before, "papaya_deliveries_total", kind="live") == 1.0  # to alice
    assert value(before, "papaya_lag_evictions_total") == 0.0
    assert value(after, "papaya_connections", transport="tcp", dialect="native") == 1.0
    assert value(after, "papaya_connections", transport="tcp", dialect="papaya") == 0.0
    assert value(after, "papaya_messages_stored_total") == 31.0
    assert value(after, "papaya_lag_evictions_total") == 1.0
    assert value(after, "papaya_log_messages") == 31.0
    # The stuck client read carol's message as history, then lagged from its first live one.
    assert value(after, "papaya_deliveries_total", kind="history") == 1.0
    assert value(after, "papaya_deliveries_total", kind="live") == 31.0  # all to alice
    assert value(after, "papaya_send_backlog_messages") == 0.0  # stuck is gone


async def test_fsync_and_append_latency_on_trio_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    metrics = Metrics()
    disk = SlowDisk()
    async with open_world(metrics.storage(disk), metrics=metrics) as world:
        alice, _ = await world.join("alice")
        for i in range(3):
            await alice.chat(f"m{i}")
        samples = samples_of(metrics)
    for name in ("papaya_fsync_seconds", "papaya_append_seconds"):
        assert value(samples, f"{name}_bucket", le="0.025") == 0.0
        assert value(samples, f"{name}_bucket", le="0.05") == 3.0
        assert value(samples, f"{name}_count") == 3.0
        assert abs((value(samples, f"{name}_sum") or 0.0) - 3 * FSYNC_DELAY) < 1e-9
    assert value(samples, "papaya_log_bytes") == len(disk.data)


async def test_without_a_log_file_there_is_no_log_size(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_world() as world:  # storage not metered, as with the Redis store
        alice, _ = await world.join("alice")
        await alice.chat("hello")
        samples = samples_of(world.room.metrics)
    assert value(samples, "papaya_log_messages") == 1.0
    assert value(samples, "papaya_log_bytes") is None


def counted_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    client, server = trio.testing.memory_stream_pair()
    return CountingStream(client), server


async def test_bytes_are_what_the_clients_sent_and_received(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_world(make_pair=counted_pair) as world:
        alice, _ = await world.join("alice")
        bob, _ = await world.join("bob")
        await alice.chat("hello bob", "a1")
        await bob.messages(1)
        streams = [alice.stream, bob.stream]
        for stream in streams:
            assert isinstance(stream, CountingStream)
            await stream.send_eof()  # the server ends the session and closes
            await read_to_end(stream)
        await trio.testing.wait_all_tasks_blocked()
        samples = samples_of(world.room.metrics)
    sent = sum(s.sent for s in streams if isinstance(s, CountingStream))
    received = sum(s.received for s in streams if isinstance(s, CountingStream))
    assert received > 0 and sent > 0
    assert value(samples, "papaya_received_bytes_total", port="tcp") == sent
    assert value(samples, "papaya_sent_bytes_total", port="tcp") == received


async def http_get(listener: MemoryListener, request: bytes) -> bytes:
    stream = await listener.connect()
    await stream.send_all(request)
    return await read_to_end(stream)


async def test_metrics_listener_serves_metrics_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log, _ = await ChatLog.open(MemoryStorage(), clock_ms=trio_clock_ms)
    room = Room(log, KEY, RoomSettings())
    server = ChatServer(room)
    listener = MemoryListener(trio.testing.memory_stream_pair)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(server.serve, [], metrics_listeners=[listener]))
        scrape = await http_get(listener, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        page = await http_get(listener, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        upgrade = await http_get(
            listener,
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        server.shutdown()
    head, _, body = scrape.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert value(parse(body.decode()), "papaya_log_messages") == 0.0
    assert page.startswith(b"HTTP/1.1 404 ")
    assert upgrade.startswith(b"HTTP/1.1 404 ")  # no WebSocket, so no chat, on this port


@pytest.mark.parametrize(
    ("value_", "address"),
    [
        ("off", None),
        ("http", None),
        ("127.0.0.1:9772", ("127.0.0.1", 9772)),
        ("[::1]:0", ("::1", 0)),
        ("*:9772", ("*", 9772)),
    ],
)
def test_metrics_option_values(value_: str, address: tuple[str, int] | None) -> None:
    assert config_from(["--metrics", value_]).metrics_address == address


def test_metrics_are_off_by_default() -> None:
    assert config_from([]).metrics == "off"
    assert config_from(["--mode", "fork"]).metrics == "off"
    assert config_from(["--mode", "fork", "--metrics", "127.0.0.1:0"]).metrics_address


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--metrics", "on"], "metrics must be off, http or HOST:PORT, not 'on'"),
        (["--metrics", "9772"], "metrics must be off, http or HOST:PORT"),
        (["--metrics", "127.0.0.1:"], "metrics must be off, http or HOST:PORT"),
        (["--metrics", ":9772"], "metrics must be off, http or HOST:PORT"),
        (["--metrics", "127.0.0.1:65536"], "metrics must be off, http or HOST:PORT"),
        (["--metrics", "127.0.0.1:-1"], "metrics must be off, http or HOST:PORT"),
        (["--metrics", "http", "--mode", "fork"], "fork mode has no HTTP port"),
        (
            ["--metrics", "127.0.0.1:9772", "--store", "redis", "--workers", "2"],
            "metrics count one server",
        ),
    ],
)
def test_bad_metrics_option_is_a_clear_error(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from(argv)


def exported_names() -> dict[str, set[str]]:
    """Each metric family the server exports: its name in the README -> its sample names."""
    names: dict[str, set[str]] = {}
    metrics = Metrics()
    metrics.watch_log_file(lambda: 0)  # a file store's server
    for family in metrics.registry.collect():
        if family.type == "counter":
            names[family.name + "_total"] = {family.name + "_total"}
        elif family.type == "histogram":
            names[family.name] = {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            names[family.name] = {family.name}
    return names


def test_readme_lists_every_metric_and_the_dashboard_queries_only_those() -> None:
    root = Path(__file__).parent.parent
    exported = exported_names()
    readme = (root / "README.md").read_text()
    for name in exported:
        assert f"| `{name}` |" in readme, name
    dashboard = json.loads((root / "docs" / "grafana-dashboard.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bpapaya_[a-z_]+", target["expr"])
    }
    queried |= set(re.findall(r"\bpapaya_[a-z_]+", (root / "docs" / "metrics.md").read_text()))
    samples = set().union(*exported.values())
    assert queried and queried <= samples, queried - samples


async def test_websocket_clients_and_refusals(autojump_clock: trio.testing.MockClock) -> None:
    async with open_web_world() as world:
        alice, _ = await world.join_ws("alice")
        await alice.chat("over a websocket")
        assert (
            await world.request(upgrade_request("/ws", "Origin: http://evil.example"))
        ).status == 403
        assert (await world.request(upgrade_request("/elsewhere"))).status == 404
        during = samples_of(world.room.metrics)
        await alice.ws.aclose()
        await trio.testing.wait_all_tasks_blocked()
        after = samples_of(world.room.metrics)
    assert value(during, "papaya_connections", transport="websocket", dialect="native") == 1.0
    assert value(after, "papaya_connections", transport="websocket", dialect="native") == 0.0
    assert value(during, "papaya_handshakes_refused_total", reason="origin") == 1.0
    assert value(during, "papaya_handshakes_refused_total", reason="websocket_path") == 1.0
    assert value(during, "papaya_messages_stored_total") == 1.0
    assert (value(during, "papaya_received_bytes_total", port="http") or 0) > 0
    assert value(during, "papaya_received_bytes_total", port="tcp") is None


async def test_a_flood_on_the_metrics_listener_cannot_crowd_out_the_chat(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log, _ = await ChatLog.open(MemoryStorage(), clock_ms=trio_clock_ms)
    room = Room(log, KEY, RoomSettings())
    server = ChatServer(room, max_connections=1)
    tcp = MemoryListener(trio.testing.memory_stream_pair)
    metrics = MemoryListener(trio.testing.memory_stream_pair)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(server.serve, [tcp], metrics_listeners=[metrics]))
        silent = [await metrics.connect() for _ in range(MAX_SCRAPES)]
        started = trio.current_time()
        extra = await metrics.connect()
        assert await read_to_end(extra) == b""  # over MAX_SCRAPES: closed at once
        assert trio.current_time() == started
        alice = LineClient(await tcp.connect())  # max_connections = 1: the scrapes are no clients
        await alice.hello("alice")
        for stream in silent:  # each has the handshake timeout to send its request
            assert await read_to_end(stream) == b""
        assert trio.current_time() - started == WebSocketSettings().handshake_timeout
        huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 40000 + b"\r\n\r\n"
        assert (await http_get(metrics, huge)).startswith(b"HTTP/1.1 431 ")
        answer = await http_get(metrics, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ")
        server.shutdown()
