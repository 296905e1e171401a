"""What one trial runs: the server under test, or K server nodes and the Redis they share.

`deploy` starts a `ServerSpec` for one trial and stops everything it started afterwards:

- **one server** (the sinks, ``papaya-trio serve`` on the file store, an ``--external``
  command): one process pinned to the server CPU, its stderr in ``server.log``;
- **K nodes on Redis** (``--nodes K``, ``--store redis``): first a ``redis-server`` of the
  trial's own (a folder in the trial's temporary folder, a free port on 127.0.0.1, the
  append-only file on, ``appendfsync`` as the spec says, no snapshots), pinned to the Redis
  CPU; then K ``papaya-trio serve --store redis`` processes on it, node i pinned to its own
  CPU, each with its own ports and log (``server-<i>.log``), all sharing the room's folder
  (with the Redis store it holds only the key).

Each server, and Redis, runs in a cgroup of its own where the system allows it
(`cgroup.Cgroup`; else `processes` finds them by their listening ports), so the sampler
counts every process a command starts and stopping leaves none behind, a daemon that
detached from the bench's process tree and group included. With a CPU quota
(``--node-cpu``, `cpuquota`), each node also runs in a quota cgroup of its own, removed
with the server's; a quota that cannot be set ends the trial with a `BenchError`, never an
uncapped run. Everything waits under a deadline: a server that never announces its port,
or a Redis that never answers, ends the trial with a `BenchError` instead of hanging the
sweep.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from papaya_trio.bench.cgroup import Cgroup, enter
from papaya_trio.bench.cpuquota import CpuQuota, QuotaError, QuotaGroup, node_group, v1_cpu_root
from papaya_trio.bench.processes import ServerProcesses
from papaya_trio.bench.servers import ServerSpec, free_port

#: Longest wait for a server to listen, or for Redis to answer.
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
#: How often the server's log is read while waiting for its port announcement.
_ANNOUNCEMENT_POLL = 0.02
#: How much of the server's log an error message quotes.
_LOG_TAIL = 2000
SERVER_LOG = "server.log"
REDIS_FOLDER = "redis"


class BenchError(Exception):
    """A trial could not be run (a server did not start, the generator failed...)."""


@dataclass(frozen=True)
class Deployment:
    """What runs during one trial."""

    #: The port of each node (one for a single server).
    ports: tuple[int, ...]
    #: The server's processes, every node's together.
    server: ServerProcesses
    #: Redis's, when the nodes share one.
    redis: ServerProcesses | None
    redis_url: str | None
    #: Each node's CPU quota cgroup, when the nodes run under a quota.
    quotas: tuple[QuotaGroup, ...] = ()


def _log_tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-_LOG_TAIL:]
    except OSError:
        return ""


async def _wait_announced(
    process: trio.Process, pattern: str, log_path: Path, deadline: float
) -> int:
    """The port the server announces in its log; BenchError if it exits or takes too long."""
    # The log is a file, not a pipe: a server that logs every connection never blocks on it.
    announcement = re.compile(pattern)
    while trio.current_time() < deadline and process.returncode is None:
        if match := announcement.search(_log_tail(log_path)):
            return int(match.group(1))
        await trio.sleep(_ANNOUNCEMENT_POLL)
    raise BenchError(f"the server did not start listening: {_log_tail(log_path)!r}")


async def _wait_connectable(port: int, deadline: float) -> None:
    # Polling is the only readiness signal an arbitrary external server gives us.
    while trio.current_time() < deadline:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            await trio.sleep(0.05)
            continue
        await stream.aclose()
        return
    raise BenchError(f"nothing listens on port {port} after {STARTUP_TIMEOUT:.0f} s")


async def _redis_answers(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return False
    async with stream:
        await stream.send_all(b"PING\r\n")
        with trio.move_on_after(1.0):
            return (await stream.receive_some(64)).startswith(b"+PONG")
    return False


async def _launch(
    argv: list[str], cpus: frozenset[int], log_path: Path, procs: Sequence[Path]
) -> trio.Process:
    """Start `argv` inside the cgroups whose ``cgroup.procs`` are `procs`, pinned to `cpus`
    (its children inherit both), stderr to a file."""
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            enter(procs, argv) if procs else argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    os.sched_setaffinity(process.pid, cpus)
    return process


async def _reap(processes: ServerProcesses, started: Sequence[trio.Process]) -> None:
    """Stop every process of the server, collect the exit of those we started, and remove
    the server's cgroup."""
    await processes.stop(STOP_TIMEOUT)
    with trio.CancelScope(shield=True):
        for process in started:
            if process.returncode is None:
                process.kill()
            await process.wait()
    await processes.close()


@asynccontextmanager
async def _running(label: str) -> AsyncIterator[tuple[ServerProcesses, list[trio.Process]]]:
    """A (possibly empty) server: its cgroup made first, everything in it stopped after."""
    group = Cgroup.create(label)
    processes = ServerProcesses([], group)
    started: list[trio.Process] = []
    try:
        yield processes, started
    finally:
        await _reap(processes, started)


@asynccontextmanager
async def running_redis(
    folder: Path, cpus: frozenset[int], appendfsync: str
) -> AsyncIterator[tuple[ServerProcesses, str]]:
    """A fresh redis-server in `folder`; yields its processes and its URL."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise BenchError("redis-server is not installed (Debian: apt-get install redis-server)")
    # Not trio.Path: its worker thread would inherit the runner's pinning and keep it.
    os.mkdir(folder)
    port = free_port()
    argv = [
        executable,
        *("--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder)),
        *("--save", "", "--appendonly", "yes", "--appendfsync", appendfsync),
        *("--logfile", str(folder / "redis.log")),
    ]
    async with _running("redis") as (processes, started):
        procs = [processes.group.procs] if processes.group else []
        process = await _launch(argv, cpus, folder / "stderr.log", procs)
        started.append(process)
        processes.roots.append(process.pid)
        deadline = trio.current_time() + STARTUP_TIMEOUT
        while not await _redis_answers(port):
            if trio.current_time() > deadline or process.returncode is not None:
                log = _log_tail(folder / "redis.log")
                raise BenchError(f"redis-server did not start: {log!r}")
            await trio.sleep(0.05)
        yield processes, f"redis://127.0.0.1:{port}/0"


@asynccontextmanager
async def deploy(
    spec: ServerSpec,
    node_cpus: Sequence[frozenset[int]],
    redis_cpus: frozenset[int],
    workdir: Path,
    quota: CpuQuota | None = None,
) -> AsyncIterator[Deployment]:
    """Start `spec` for one trial in `workdir` (its room in ``workdir/data``); stop it after.

    Node i runs on ``node_cpus[i]``, under `quota` if one is given; Redis (if the spec needs
    one) on `redis_cpus`, without a quota.
    """
    async with AsyncExitStack() as stack:
        redis: ServerProcesses | None = None
        redis_url = None
        if spec.redis_appendfsync is not None:
            redis, redis_url = await stack.enter_async_context(
                running_redis(workdir / REDIS_FOLDER, redis_cpus, spec.redis_appendfsync)
            )
        processes, started = await stack.enter_async_context(_running(spec.name))
        ports = []
        for node in range(spec.nodes):
            port = 0 if spec.announcement else free_port()
            log_path = workdir / (SERVER_LOG if spec.nodes == 1 else f"server-{node}.log")
            argv = spec.argv(port, workdir / "data", redis_url)
            procs = _node_procs(processes, quota, f"{spec.name}-{node}")
            process = await _launch(argv, node_cpus[node], log_path, procs)
            started.append(process)
            processes.roots.append(process.pid)
            deadline = trio.current_time() + STARTUP_TIMEOUT
            if spec.announcement:
                port = await _wait_announced(process, spec.announcement, log_path, deadline)
            else:
                await _wait_connectable(port, deadline)
            ports.append(port)
        processes.find_listeners(ports)
        yield Deployment(tuple(ports), processes, redis, redis_url, tuple(processes.quotas))


def _node_procs(processes: ServerProcesses, quota: CpuQuota | None, label: str) -> list[Path]:
    """The cgroups a node enters: the server's, and a quota cgroup of its own if `quota`
    (which `processes` removes with the server's)."""
    group = processes.group
    if quota is None:
        return [group.procs] if group else []
    try:
        capped = node_group(quota, group, label, v1_cpu_root())
    except QuotaError as exc:
        raise BenchError(f"--node-cpu: {exc}") from None
    processes.quotas.append(capped)
    return capped.procs_with(group)


@asynccontextmanager
async def running_server(
    spec: ServerSpec, cpus: frozenset[int], workdir: Path
) -> AsyncIterator[tuple[int, int]]:
    """Start a one-node `spec` pinned to `cpus`; yield (pid, port) of the process started."""
    async with deploy(spec, [cpus] * spec.nodes, cpus, workdir) as deployment:
        yield deployment.server.roots[0], deployment.ports[0]
