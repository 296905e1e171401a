"""Servers that detach from the bench: every process is measured, and all are stopped.

A real daemon (fork, setsid, fork, the parents exit) is started as an ``--external``
server, once in a cgroup of its own and once found through its listening port; its CPU as
the bench measures it must match what /proc says for its processes, and nothing of it may
outlive the trial.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import trio

from papaya_trio.bench.cgroup import Cgroup, enter, unified_root
from papaya_trio.bench.deployment import deploy
from papaya_trio.bench.processes import listening_inodes, socket_owners
from papaya_trio.bench.sampler import ProcessTreeSampler, interval
from papaya_trio.bench.servers import external_spec

CPUS = frozenset(os.sched_getaffinity(0))
HERE = Path(__file__).parent
DAEMONIZE = f"{sys.executable} {HERE / 'daemonize.py'}"
SPIN_DAEMON = f"spin={DAEMONIZE} {sys.executable} {HERE / 'spin_server.py'} {{port}}"
MEASURE_SECONDS = 1.5


@pytest.fixture(params=["cgroup", "port owner"])
def tracking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test runs with a cgroup per server, and again with the port-owner fallback."""
    if request.param == "port owner":
        monkeypatch.setattr(Cgroup, "create", classmethod(lambda cls, label: None))
    else:
        probe = Cgroup.create("probe")
        if probe is None:
            pytest.skip("no writable cgroup v2 hierarchy here")
        assert probe.remove()
    yield request.param


def proc_cpu_seconds(pid: int) -> float:
    """User + system time of `pid` from /proc/PID/stat (clock ticks), as a check."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def the_daemon(port: int) -> list[psutil.Process]:
    """The process listening on `port` and its children."""
    (owner,) = socket_owners(listening_inodes(port))
    daemon = psutil.Process(owner)
    return [daemon, *daemon.children(recursive=True)]


async def test_a_daemon_is_measured_whole_and_stopped(tmp_path: Path, tracking: str) -> None:
    async with deploy(external_spec(SPIN_DAEMON), [CPUS], CPUS, tmp_path) as deployment:
        (port,) = deployment.ports
        daemon = the_daemon(port)
        started = deployment.server.roots[0]
        # It really detached: neither the process the bench started nor in its session.
        assert daemon[0].pid != started and os.getsid(daemon[0].pid) != started
        assert len(daemon) == 2  # the spinning child too
        sampler = ProcessTreeSampler(deployment.server, CPUS)
        before = sampler.snapshot(trio.current_time())
        proc_before = sum(proc_cpu_seconds(p.pid) for p in daemon)
        await trio.sleep(MEASURE_SECONDS)
        after = sampler.snapshot(trio.current_time())
        proc_after = sum(proc_cpu_seconds(p.pid) for p in daemon)
        measured = interval(before, after)
        group = deployment.server.group
    by_proc = proc_after - proc_before
    assert by_proc > 0.1, "the daemon did not get to spin"
    assert measured.cpu_percent * measured.seconds / 100 == pytest.approx(
        by_proc, rel=0.15, abs=0.03
    )
    assert {p.pid for p in daemon} <= set(after.processes)
    assert after.processes[daemon[0].pid].rss_bytes > 0  # memory is read too
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in daemon)
    assert group is None or not group.path.exists()


async def test_a_process_that_exits_keeps_its_cpu_in_the_cgroup(tmp_path: Path) -> None:
    group = Cgroup.create("exits")
    if group is None:
        pytest.skip("no writable cgroup v2 hierarchy here")
    try:
        burn = "import time\nend = time.process_time() + 0.2\nwhile time.process_time() < end: pass"
        process = await trio.run_process(enter([group.procs], [sys.executable, "-c", burn]))
        assert process.returncode == 0
        assert group.pids() == set()
        assert group.cpu_seconds() >= 0.2
    finally:
        assert group.remove()


def test_a_hostile_server_name_cannot_place_its_cgroup_elsewhere() -> None:
    group = Cgroup.create("../../escape/" + "x" * 300)
    if group is None:
        pytest.skip("no writable cgroup v2 hierarchy here")
    try:
        root = unified_root()
        assert root is not None and group.path.parent == root
        assert "/" not in group.path.name and ".._.._escape_" in group.path.name
        assert len(group.path.name) < 100
    finally:
        assert group.remove()


def test_listening_inodes_reads_both_tables(tmp_path: Path) -> None:
    v4 = tmp_path / "tcp"
    v6 = tmp_path / "tcp6"
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when ... inode\n"
    v4.write_text(
        header
        + "   0: 0100007F:1E2A 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 111 1\n"
        # an established connection from the same port is not a listener
        + "   1: 0100007F:1E2A 0100007F:9C40 01 00000000:00000000 00:00000000 00000000 0 0 222 1\n"
        + "   2: 0100007F:1E2B 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 333 1\n"
        + "garbage\n"
    )
    v6.write_text(
        header + "   0: 00000000000000000000000000000000:1E2A 00000000000000000000000000000000:0000"
        " 0A 00000000:00000000 00:00000000 00000000 0 0 444 1\n"
    )
    assert listening_inodes(0x1E2A, [v4, v6]) == {111, 444}
    assert listening_inodes(0x1E2A, [tmp_path / "missing"]) == set()
