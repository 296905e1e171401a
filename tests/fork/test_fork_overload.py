"""Fork mode under pressure: over the limit, out of descriptors or processes, parent killed.

Real `serve --mode fork` processes on loopback. Descriptors are limited with `prlimit` on the
running server (its children inherit the limit); processes with a cgroup's `pids.max`, the
only process limit that binds root (RLIMIT_NPROC does not).
"""

from __future__ import annotations

import re
import resource
import select
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil
import pytest
import trio

from papaya_trio.fork.overload import MAX_REFUSALS
from tests.fork.conftest import (
    BIG_COUNT,
    BIG_MESSAGES,
    WAIT_TIMEOUT,
    Clients,
    big_text,
    children_of,
    wait_until,
)
from tests.memory_world import LineClient
from tests.real_server import RunningServer, ServerFactory

PIDS_CGROUPS = Path("/sys/fs/cgroup/pids")
EXHAUSTED = re.compile(r"(accept|pipe2|fork) failed: .*turning connections away")
SERVING_AGAIN = re.compile(r"serving again after (\d+) failed attempts")


@contextmanager
def silent_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections that never send a byte (connected through the kernel's backlog)."""
    with ExitStack() as stack:
        socks = []
        for _ in range(count):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
            sock.setblocking(False)
            socks.append(sock)
        yield socks


def closed_by_server(socks: list[socket.socket]) -> int:
    """How many of `socks` the server has closed (end of stream or reset)."""
    by_fd = {sock.fileno(): sock for sock in socks}
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    closed = 0
    for fd, _ in poller.poll(0):
        try:
            closed += by_fd[fd].recv(1, socket.MSG_PEEK) == b""
        except ConnectionResetError:
            closed += 1
    return closed


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def welcome_with_retries(server: RunningServer, clients: Clients, user: str) -> LineClient:
    """Connect and say hello until welcomed: a connection that arrives while the server is
    out of resources is closed (or reset), and a real client reconnects (bounded by the caller)."""
    for _ in range(200):
        client = LineClient(await clients.connect(server.port))
        try:
            await client.send(type="hello", key=server.key, user=user)
            reply = await client.receive()
        except trio.BrokenResourceError:
            continue  # reset instead of closed: the same refusal, seen by a loaded kernel
        if reply is not None:
            assert reply["type"] == "welcome", reply
            return client
    raise AssertionError("never welcomed")


async def test_over_the_limit_the_parent_refuses_without_forking(
    fork_servers: ServerFactory, clients: Clients
) -> None:
    # A refused socket waits 5 s for its first byte: ample for a hello sent at once.
    server = fork_servers.start("--max-connections", "2", "--papaya-auth-timeout", "5")
    with trio.fail_after(WAIT_TIMEOUT):
        alice = await clients.native(server, "alice")
        await clients.native(server, "bob")
        await wait_until(lambda: len(children_of(server)) == 4, "a RECV and a SEND per member")
        with silent_connections(server.port, 40) as silent:
            refused = LineClient(await clients.connect(server.port))
            await refused.send(type="hello", key=server.key, user="carol")
            error = await refused.expect("error")
            assert (error["code"], error["fatal"]) == ("server_full", True)
            assert await refused.receive() is None
            papaya = await clients.papaya(server)
            assert await papaya.receive_some(1) == b"", "a papayaChat client is just closed"
            # The 40 silent connections were accepted before the two refused ones: had they
            # been given a process each, their processes would be waiting for a first byte.
            assert len(children_of(server)) == 4
            await wait_until(lambda: closed_by_server(silent) == 40, "silent refusals closed")
        assert await alice.chat("still here") == 1
    assert "carol" not in server.log  # refused before anyone read the hello
    assert server.stop() == 0


async def test_refused_connections_waiting_in_the_parent_are_bounded(
    fork_servers: ServerFactory, clients: Clients
) -> None:
    server = fork_servers.start("--max-connections", "1", "--papaya-auth-timeout", "60")
    with trio.fail_after(WAIT_TIMEOUT):
        await clients.native(server, "alice")
        with silent_connections(server.port, MAX_REFUSALS + 6) as silent:
            refused = LineClient(await clients.connect(server.port))
            await refused.send(type="hello", key=server.key, user="carol")
            assert (await refused.expect("error"))["code"] == "server_full"
            # The native one came last: by its answer every silent one had been taken, and
            # each newcomer past the bound pushed out the one that had waited longest.
            assert [closed_by_server([sock]) for sock in silent] == [1] * 7 + [0] * (
                MAX_REFUSALS - 1
            )
    assert server.stop() == 0


async def test_out_of_descriptors_the_parent_backs_off_and_serves_again(
    fork_servers: ServerFactory, clients: Clients
) -> None:
    server = fork_servers.start("--auth-timeout", "60")
    resource.prlimit(server.process.pid, resource.RLIMIT_NOFILE, (64, 64))
    with trio.fail_after(WAIT_TIMEOUT * 2):
        with silent_connections(server.port, 150) as flood:
            await wait_until(lambda: EXHAUSTED.search(server.log) is not None, "exhaustion")
            # Each later attempt takes one connection from the backlog and closes it.
            await wait_until(lambda: closed_by_server(flood) >= 5, "attempts turned away")
            assert server.process.poll() is None, "the parent died"
        await wait_until(lambda: SERVING_AGAIN.search(server.log) is not None, "recovery")
        alice = await welcome_with_retries(server, clients, "alice")
        assert await alice.chat("after the flood", "a1") == 1
        assert [m["text"] for m in await alice.messages(1)] == ["after the flood"]
    # One line when an episode begins and one when it ends (alice's process ended the last),
    # however many attempts failed in between.
    episodes, attempts = EXHAUSTED.findall(server.log), SERVING_AGAIN.findall(server.log)
    assert len(episodes) == len(attempts), server.log
    assert sum(map(int, attempts)) >= len(episodes) + 4, server.log
    assert server.process.poll() is None
    assert "Traceback" not in server.log
    assert server.stop() == 0


@contextmanager
def pids_cgroup(server: RunningServer) -> Iterator[Path]:
    """A pids cgroup holding the server (and what it forks from now on); the server is stopped
    before the group is removed."""
    group = PIDS_CGROUPS / f"papaya-test-{uuid.uuid4().hex[:12]}"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a pids cgroup to limit processes: {exc}")
    try:
        (group / "cgroup.procs").write_text(str(server.process.pid))
        yield group
    finally:
        server.kill()
        deadline = time.monotonic() + WAIT_TIMEOUT
        while (group / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.02)  # the server's children end with it (die_with_parent)
        group.rmdir()


def allow_more_processes(group: Path, more: int) -> None:
    current = int((group / "pids.current").read_text())
    (group / "pids.max").write_text(str(current + more))


async def test_fork_failing_turns_connections_away_and_the_parent_keeps_serving(
    fork_servers: ServerFactory, clients: Clients
) -> None:
    server = fork_servers.start()
    with pids_cgroup(server) as group, trio.fail_after(WAIT_TIMEOUT):
        allow_more_processes(group, 1)  # a connection process, but not its SEND
        lonely = LineClient(await clients.connect(server.port))
        await lonely.send(type="hello", key=server.key, user="lonely")
        assert (await lonely.expect("error"))["code"] == "server_full"
        await wait_until(lambda: not children_of(server), "the refused process reaped")
        allow_more_processes(group, 2)  # one pair
        alice = await clients.native(server, "alice")
        for _ in range(3):  # the parent's fork fails: closed before the welcome
            stream = await clients.connect(server.port)
            assert await stream.receive_some(1) == b""
        assert len(re.findall(r"fork failed", server.log)) == 1, "logged once per episode"
        assert await alice.chat("hi") == 1
        await clients.close_all()
        bob = await welcome_with_retries(server, clients, "bob")  # alice's pair is reaped
        assert await bob.chat("hi again") == 2
        assert "cannot start its send process" in server.log
        assert server.stop() == 0


async def test_restart_succeeds_at_once_after_the_parent_is_killed(
    fork_servers: ServerFactory, clients: Clients
) -> None:
    first = fork_servers.start(*BIG_MESSAGES)
    sent = BIG_COUNT  # stuck's SEND stays in the middle of a write
    with trio.fail_after(WAIT_TIMEOUT * 2):
        alice = await clients.native(first, "alice")
        await clients.native(first, "stuck", receive_buffer=4096)  # reads nothing
        for i in range(sent):
            await alice.chat(big_text(i))
        orphans = [child.pid for child in children_of(first)]
        assert len(orphans) == 4
        first.process.kill()
        first.process.wait()
        second = fork_servers.start(*BIG_MESSAGES, data_dir=first.data_dir)  # raises if refused
        await wait_until(lambda: not any(alive(pid) for pid in orphans), "orphans gone")
        while (obj := await alice.receive()) is not None:  # the dead server's client is closed
            assert obj["type"] == "message" or obj["code"] == "shutdown", obj
        bob = await clients.native(second, "bob", since=0)
        assert len(await bob.messages(sent)) == sent
        assert await bob.chat("after the restart") == sent + 1
    assert second.stop() == 0


def keepalive_timer(server_port: int, client_port: int) -> str:
    """`ss`'s timer column for the server's side of one loopback connection ('' if none)."""
    out = subprocess.run(
        ["ss", "-tnoH", "state", "established", f"( sport = :{server_port} )"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    for line in out.splitlines():
        if f":{client_port} " in line + " ":
            found = re.search(r"timer:\((\w+),", line)
            return found.group(1) if found else ""
    raise AssertionError(f"no connection from port {client_port} in:\n{out}")


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
async def test_accepted_sockets_get_keepalive_in_fork_mode(
    fork_servers: ServerFactory, clients: Clients
) -> None:
    # Members and refused connections alike: the kernel's keepalive timer runs on both.
    server = fork_servers.start("--max-connections", "1", "--tcp-keepalive-idle", "7")
    with trio.fail_after(WAIT_TIMEOUT):
        member = await clients.native(server, "alice")
        refused = await clients.connect(server.port)
    for stream in (member.stream, refused):
        assert isinstance(stream, trio.SocketStream)
        client_port = stream.socket.getsockname()[1]
        assert keepalive_timer(server.port, client_port) == "keepalive"


SERVE_FORK = (sys.executable, "-m", "papaya_trio", "serve", "--mode", "fork")


@pytest.mark.parametrize(
    "flag", [["--max-handshakes", "10"], ["--rate-messages", "5"], ["--idle-timeout", "30"]]
)
def test_fork_mode_refuses_trio_modes_limits_instead_of_ignoring_them(
    flag: list[str], tmp_path: Path
) -> None:
    result = subprocess.run(
        [*SERVE_FORK, "--data-dir", str(tmp_path / "data"), *flag],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert "fork mode has none of trio mode's admission and rate limits" in result.stderr
    assert flag[0] in result.stderr
    assert not (tmp_path / "data").exists(), "refused before touching the data folder"
