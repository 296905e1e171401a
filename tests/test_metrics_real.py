"""/metrics of a real `papaya-trio serve` process, scraped over HTTP and parsed with
prometheus_client's parser: exact values after a known sequence of actions."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import trio

from tests.memory_world import LineClient
from tests.metrics_scrape import (
    CountingStream,
    fetch,
    key,
    read_to_end,
    scrape,
    settled,
    value,
)
from tests.real_server import Dialer, RunningServer, ServerFactory

TIMEOUT = 30.0
METRICS_LISTENING = re.compile(r"listening metrics (http://\S+/metrics)")
FLOOD_LIMIT = 3000  # messages sent to make a non-reading client lag, at most
STUCK_RECEIVE_BUFFER = 2048


def metrics_url(server: RunningServer) -> str:
    match = METRICS_LISTENING.search(server.log)
    assert match, server.log
    return match.group(1)


async def test_metrics_count_a_known_sequence_exactly(
    trio_servers: ServerFactory, dial: Dialer
) -> None:
    server = trio_servers.start("--metrics", "127.0.0.1:0", "--max-lag", "20")
    url = metrics_url(server)
    assert server.url is not None
    counted: list[CountingStream] = []

    async def connect() -> CountingStream:
        stream = CountingStream(await dial.connect(server.port))
        counted.append(stream)
        return stream

    with trio.fail_after(TIMEOUT):
        alice = LineClient(await connect())
        await alice.hello("alice", key=server.key)
        bob = await connect()  # papayaChat dialect
        await bob.send_all(server.key.encode())
        for i in range(3):
            await alice.chat(f"m{i}", f"a{i}")
        bob_got = b""
        while bob_got.count(b"\x00") < 3:
            bob_got += await bob.receive_some(65536)
        mallory = LineClient(await connect())
        await mallory.send(type="hello", key="x" * 128, user="mallory")
        assert json.loads(await read_to_end(mallory.stream))["code"] == "bad_key"

        expected = {
            key("papaya_connections", transport="tcp", dialect="native"): 1.0,
            key("papaya_connections", transport="tcp", dialect="papaya"): 1.0,
            key("papaya_handshakes_refused_total", reason="bad_key"): 1.0,
            key("papaya_messages_stored_total"): 3.0,
            key("papaya_messages_resent_total"): 0.0,
            key("papaya_deliveries_total", kind="live"): 6.0,  # alice's 3 to alice and bob
            key("papaya_log_messages"): 3.0,
            key("papaya_append_seconds_count"): 3.0,
            key("papaya_fsync_seconds_count"): 3.0,  # one message at a time: one fsync each
            key("papaya_lag_evictions_total"): 0.0,
            key("papaya_received_bytes_total", port="tcp"): sum(s.sent for s in counted),
            key("papaya_sent_bytes_total", port="tcp"): sum(s.received for s in counted),
            key("papaya_open_connections"): 2.0,  # alice and bob (not the metrics listener's)
        }
        samples = await settled(url, expected)
        assert {k: samples.get(k) for k in expected} == expected
        assert value(samples, "papaya_log_bytes") == (server.data_dir / "chat.log").stat().st_size
        assert value(samples, "papaya_deliveries_total", kind="history") == 0.0
        assert value(samples, "papaya_send_backlog_messages") == 0.0  # bob has read them all
        # The metrics listener serves /metrics only, and the HTTP port has none.
        assert fetch(url.replace("/metrics", "/"))[0] == 404
        assert fetch(server.url + "metrics")[0] == 404

        # A client that stops reading is dropped once it lags max_lag behind.
        await trio.aclose_forcefully(bob)
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STUCK_RECEIVE_BUFFER)
        await sock.connect(("127.0.0.1", server.port))
        stuck = LineClient(trio.SocketStream(sock))
        await stuck.hello("stuck", key=server.key)  # then never reads again
        sent = 0
        evictions: float | None = 0.0
        while evictions == 0.0 and sent < FLOOD_LIMIT:
            for _ in range(10):
                await alice.chat("x" * 4000)
                sent += 1
            evictions = value(await scrape(url), "papaya_lag_evictions_total")
        expected = {
            key("papaya_lag_evictions_total"): 1.0,
            key("papaya_messages_stored_total"): 3.0 + sent,
            key("papaya_connections", transport="tcp", dialect="native"): 1.0,  # alice
            key("papaya_connections", transport="tcp", dialect="papaya"): 0.0,
        }
        samples = await settled(url, expected)
        assert {k: samples.get(k) for k in expected} == expected
        assert "stuck left: lagging" in server.log, sent
    await trio.aclose_forcefully(stuck.stream)
    assert server.stop() == 0


async def test_metrics_are_off_by_default(trio_servers: ServerFactory) -> None:
    server = trio_servers.start()
    assert server.url is not None
    assert fetch(server.url + "metrics")[0] == 404
    assert fetch(server.url)[0] == 200  # the page itself is served
    assert "listening metrics" not in server.log and "/metrics" not in server.log
    assert server.stop() == 0


async def test_metrics_on_the_http_port(trio_servers: ServerFactory, dial: Dialer) -> None:
    server = trio_servers.start("--metrics", "http")
    assert server.url is not None
    with trio.fail_after(TIMEOUT):
        alice = await dial.native(server, "alice")
        await alice.chat("hello", "a1")
        await alice.chat("hello", "a1")  # a resend: acknowledged, not stored again
        samples = await scrape(server.url + "metrics")
    assert value(samples, "papaya_messages_stored_total") == 1.0
    assert value(samples, "papaya_messages_resent_total") == 1.0
    assert value(samples, "papaya_connections", transport="tcp", dialect="native") == 1.0
    status, content_type, _ = fetch(server.url + "metrics?x=1")
    assert (status, content_type.split(";")[0]) == (200, "text/plain")
    assert server.stop() == 0


async def test_fork_mode_exports_what_its_parent_knows(tmp_path: Path, dial: Dialer) -> None:
    servers = ServerFactory(tmp_path, "fork")
    try:
        server = servers.start("--metrics", "127.0.0.1:0", "--max-connections", "1")
        url = metrics_url(server)
        with trio.fail_after(TIMEOUT):
            silent = await dial.connect(int(url.rsplit(":", 1)[1].split("/")[0]))  # never asks
            alice = await dial.native(server, "alice")
            await alice.chat("one", "a1")
            await alice.chat("two", "a2")
            refused = LineClient(await dial.connect(server.port))
            await refused.send(type="hello", key=server.key, user="bob")
            assert (await refused.expect("error"))["code"] == "server_full"
            expected = {
                key("papaya_open_connections"): 1.0,
                key("papaya_handshakes_refused_total", reason="server_full"): 1.0,
                key("papaya_log_messages"): 2.0,
            }
            samples = await settled(url, expected)
        assert {k: samples.get(k) for k in expected} == expected
        assert value(samples, "papaya_log_bytes") == (server.data_dir / "chat.log").stat().st_size
        assert value(samples, "papaya_messages_stored_total") is None  # done in the children
        assert fetch(url.replace("/metrics", "/"))[0] == 404
        await trio.aclose_forcefully(silent)
        assert server.stop() == 0
    finally:
        servers.cleanup()
