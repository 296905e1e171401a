"""Several real `papaya-trio serve` processes sharing one real redis-server."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio

from papaya_trio.cli import main
from tests.memory_world import LineClient
from tests.real_server import Dialer, RunningServer, ServerFactory
from tests.redis_server import RedisServer, free_port

WAIT = 15.0  # seconds any one step of these tests may take


class RedisServers(ServerFactory):
    """Trio-mode servers with `store = "redis"` on one Redis, sharing one data folder (key)."""

    def __init__(self, tmp_path: Path, redis: RedisServer) -> None:
        super().__init__(tmp_path, "trio")
        self.redis = redis

    def start_redis_node(self) -> RunningServer:
        return self.start("--store", "redis", "--redis-url", self.redis.url, "--redis-timeout", "2")


@pytest.fixture
def nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[RedisServers]:
    factory = RedisServers(tmp_path, redis_server)
    yield factory
    factory.cleanup()


def summary(messages: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
    return [(m["seq"], m["user"], m["text"]) for m in messages]


async def messages_until_end(client: LineClient) -> list[dict[str, Any]]:
    """Every message a client gets until its connection ends (its server was killed)."""
    found = list(client.seen)
    for _ in range(100_000):
        try:
            obj = await client.receive()
        except trio.BrokenResourceError:
            break
        if obj is None:
            break
        if obj["type"] == "message":
            found.append(obj)
    return found


async def test_clients_spread_over_three_servers_see_one_order(
    nodes: RedisServers, dial: Dialer
) -> None:
    servers = [nodes.start_redis_node() for _ in range(3)]
    users = [f"user{i}" for i in range(6)]
    per_user = 10
    with trio.fail_after(WAIT):
        clients = [await dial.native(servers[i % 3], user, since=0) for i, user in enumerate(users)]

        async def chat(client: LineClient, user: str) -> None:
            for n in range(per_user):
                await client.chat(f"{user} says {n}", f"{user}-{n}")

        async with trio.open_nursery() as nursery:
            for client, user in zip(clients, users, strict=True):
                nursery.start_soon(chat, client, user)
        seen = [summary(await client.messages(len(users) * per_user)) for client in clients]
    assert [seq for seq, _, _ in seen[0]] == list(range(1, len(users) * per_user + 1))
    assert all(view == seen[0] for view in seen)
    for user in users:  # each sender's messages in the order it sent them
        assert [t for _, u, t in seen[0] if u == user] == [f"{user} says {n}" for n in range(10)]
    assert [server.stop() for server in servers] == [0, 0, 0]


async def test_servers_sharing_one_port_spread_the_clients(
    nodes: RedisServers, dial: Dialer
) -> None:
    port = free_port()
    http_port = free_port(avoid=port)
    flags = ["--store", "redis", "--redis-url", nodes.redis.url, "--reuse-port"]
    shared = [nodes.start(*flags, port=port, http_port=http_port) for _ in range(2)]
    assert [server.port for server in shared] == [port, port]
    count = 24
    with trio.fail_after(WAIT):
        clients = [await dial.native(shared[0], f"user{i}", since=0) for i in range(count)]
        for i, client in enumerate(clients):
            await client.chat(f"hello from {i}", f"id-{i}")
        seen = [summary(await client.messages(count)) for client in clients]
    assert [seq for seq, _, _ in seen[0]] == list(range(1, count + 1))
    assert all(view == seen[0] for view in seen)
    joined = [server.log.count(" joined") for server in shared]
    assert sum(joined) == count and min(joined) > 0  # the kernel spread them over both


def established_on(process: psutil.Process, port: int) -> int:
    return sum(
        1
        for connection in process.net_connections(kind="tcp")
        if connection.laddr and connection.laddr[1] == port and connection.status == "ESTABLISHED"
    )


async def start_workers(nodes: RedisServers, port: int, http_port: int) -> RunningServer:
    """`serve --workers 2`, once both workers listen."""
    flags = ["--store", "redis", "--redis-url", nodes.redis.url, "--workers", "2"]
    group = nodes.start(*flags, port=port, http_port=http_port)
    with trio.fail_after(WAIT):
        # The supervisor's log (its workers write to it too) is all there is to wait on.
        while group.log.count("listening tcp") < 2:  # noqa: ASYNC110
            await trio.sleep(0.02)
    return group


async def test_workers_share_the_ports_and_stop_together(nodes: RedisServers, dial: Dialer) -> None:
    port = free_port()
    group = await start_workers(nodes, port, free_port(avoid=port))
    workers = psutil.Process(group.process.pid).children()
    assert len(workers) == 2
    with trio.fail_after(WAIT):
        clients = [await dial.native(group, f"user{i}", since=0) for i in range(24)]
        for i, client in enumerate(clients):
            await client.chat(f"hello from {i}", f"id-{i}")
        seen = [summary(await client.messages(24)) for client in clients]
    assert all(view == seen[0] for view in seen)
    assert [seq for seq, _, _ in seen[0]] == list(range(1, 25))
    assert min(established_on(worker, port) for worker in workers) > 0
    assert group.stop() == 0
    assert not any(worker.is_running() for worker in workers)


async def test_a_worker_that_dies_stops_the_group(nodes: RedisServers) -> None:
    port = free_port()
    group = await start_workers(nodes, port, free_port(avoid=port))
    workers = psutil.Process(group.process.pid).children()
    workers[0].kill()
    assert group.process.wait(WAIT) == 1
    assert "a worker ended by itself" in group.log
    assert not any(worker.is_running() for worker in workers)


async def test_a_killed_servers_clients_resume_on_another_exactly(
    nodes: RedisServers, dial: Dialer
) -> None:
    doomed, survivor = nodes.start_redis_node(), nodes.start_redis_node()
    with trio.fail_after(WAIT):
        reader = await dial.native(doomed, "reader", since=0)
        sender = await dial.native(doomed, "alice", since=0)
        other = await dial.native(survivor, "bob", since=0)
        for n in range(10):
            await sender.chat(f"alice {n}", f"a-{n}")
            await other.chat(f"bob {n}", f"b-{n}")
        await sender.send(type="send", text="alice 10", id="a-10")  # in flight at the kill
        doomed.kill()
        before = await messages_until_end(reader)
        since = before[-1]["seq"]
        reader = await dial.native(survivor, "reader", since=since)
        sender = await dial.native(survivor, "alice", since=0)
        for n in range(10, 15):  # resend the one in flight, then go on
            await sender.chat(f"alice {n}", f"a-{n}")
        head = await other.chat("bob last", "b-last")
        after = await reader.messages(head - since)
    stored = summary(before) + summary(after)
    assert [seq for seq, _, _ in stored] == list(range(1, head + 1))
    alice = [text for _, user, text in stored if user == "alice"]
    assert alice == [f"alice {n}" for n in range(15)]  # nothing lost, nothing twice


async def test_acknowledged_messages_survive_a_redis_kill(
    nodes: RedisServers, dial: Dialer, redis_server: RedisServer
) -> None:
    server = nodes.start_redis_node()
    acked: dict[str, int] = {}
    failed: list[str] = []
    burst = 40
    with trio.fail_after(WAIT):
        watcher = await dial.native(server, "watcher", since=0)
        senders = [await dial.native(server, f"user{i}") for i in range(3)]

        async def send_burst(client: LineClient, name: str) -> None:
            for n in range(burst):
                await client.send(type="send", text=f"{name} {n}", id=f"{name}-{n}")
            answers = 0
            while answers < burst:
                obj = await client.receive()
                assert obj is not None
                if obj["type"] == "ack":
                    acked[obj["id"]] = obj["seq"]
                    answers += 1
                elif obj["type"] == "error":
                    assert obj["code"] == "storage_failed", obj
                    failed.append(obj["id"])
                    answers += 1

        async def kill_redis_mid_traffic() -> None:
            while len(acked) < 10:  # noqa: ASYNC110 (the acks arrive on other tasks' sockets)
                await trio.sleep(0.001)
            redis_server.kill()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_redis_mid_traffic)
            for i, client in enumerate(senders):
                nursery.start_soon(send_burst, client, f"user{i}")
        assert len(acked) + len(failed) == 3 * burst and failed, "redis died mid-traffic"
        redis_server.start()
        # Redis is back: a resend of a failed message is stored (once) and delivered live.
        resent = failed[0]
        user, n = resent.split("-")
        acked[resent] = await senders[int(user.removeprefix("user"))].chat(f"{user} {n}", resent)
        head = max(acked.values())
        live = await watcher.messages(head)
        late = await dial.native(server, "late", since=0)
        stored = await late.messages(head)
    assert [m["seq"] for m in stored] == list(range(1, head + 1))
    by_id = {m["text"].replace(" ", "-"): m["seq"] for m in stored}  # "user1 7" was "user1-7"
    assert {i: by_id.get(i) for i in acked} == acked  # 0 acknowledged messages lost
    assert len(by_id) == head  # and nothing stored twice
    assert summary(live) == summary(stored)
    with trio.fail_after(WAIT):
        # The server's log file is all there is to wait on.
        while "redis stream readable again" not in server.log:  # noqa: ASYNC110
            await trio.sleep(0.02)
    assert server.log.count("redis stream unreadable") == 1
    assert "coredis" not in server.log


async def test_a_room_moves_from_the_file_store_to_redis_and_back(
    tmp_path: Path, nodes: RedisServers, dial: Dialer, redis_server: RedisServer
) -> None:
    file_data = tmp_path / "file-room"
    file_server = nodes.start(data_dir=file_data)
    with trio.fail_after(WAIT):
        alice = await dial.native(file_server, "alice")
        for n in range(5):
            await alice.chat(f"hello {n}", f"a-{n}")
    assert file_server.stop() == 0
    cli = [sys.executable, "-m", "papaya_trio", "log"]
    redis_flags = ["--store", "redis", "--redis-url", redis_server.url]
    with trio.fail_after(WAIT):
        exported = await trio.run_process(
            [*cli, "export", "--data-dir", str(file_data)], capture_stdout=True
        )
        lines = exported.stdout.decode().splitlines()
        dump = tmp_path / "room.jsonl"
        dump.write_text(exported.stdout.decode())
        await trio.run_process([*cli, "import", *redis_flags, str(dump)], capture_stderr=True)
        again = await trio.run_process(
            [*cli, "export", *redis_flags, "--data-dir", str(file_data)], capture_stdout=True
        )
        back = tmp_path / "back"
        await trio.run_process(
            [*cli, "import", "--data-dir", str(back), "-"],
            stdin=exported.stdout,
            capture_stderr=True,
        )
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3, 4, 5]
    assert again.stdout.decode().splitlines() == lines  # numbers, times and ids kept
    node = nodes.start("--store", "redis", "--redis-url", redis_server.url, data_dir=file_data)
    with trio.fail_after(WAIT):
        alice = await dial.native(node, "alice", since=3)
        assert [m["text"] for m in await alice.messages(2)] == ["hello 3", "hello 4"]
        assert await alice.chat("hello 0", "a-0") == 1  # resend memory moved too
        assert await alice.chat("on redis now", "a-5") == 6
    restored = (back / "chat.log").read_text().splitlines()
    assert [json.loads(line.split(" ", 1)[1]) for line in restored] == [
        json.loads(line) for line in lines
    ]


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--mode", "fork", "--store", "redis"], "fork mode keeps its log in a file"),
        (["--store", "redis", "--redis-url", "http://x"], "redis_url must start with"),
        (["--reuse-port"], 'workers and reuse_port share one room: they need store = "redis"'),
    ],
)
def test_impossible_redis_settings_are_refused(
    flags: list[str], complaint: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["serve", "--data-dir", str(tmp_path), *flags]) == 2
    assert complaint in capsys.readouterr().err
