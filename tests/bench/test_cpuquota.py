"""A node's CPU quota (``--node-cpu``): a real capped process, the refusal where no quota can
be set, and the cgroups removed afterwards."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from papaya_trio.bench.cgroup import Cgroup, enter
from papaya_trio.bench.cpuquota import (
    V2,
    CpuQuota,
    QuotaError,
    QuotaGroup,
    node_group,
    v1_cpu_root,
)

SPIN = "while True: pass"
#: The spinner's CPU is measured over this fixed window once it runs.
WINDOW = 1.5
#: And then over this one, its quota lifted.
LIFTED_WINDOW = 0.5
START_DEADLINE = 10.0


def test_the_quota_is_a_share_of_a_short_period_within_the_kernels_bounds() -> None:
    assert CpuQuota.of(0.2) == CpuQuota(0.2, period_us=10_000, quota_us=2_000)
    assert CpuQuota.of(1.0) == CpuQuota(1.0, period_us=10_000, quota_us=10_000)
    # 1 ms is the kernel's smallest quota: a small share gets a longer period instead.
    assert CpuQuota.of(0.05) == CpuQuota(0.05, period_us=20_000, quota_us=1_000)
    assert CpuQuota.of(0.01) == CpuQuota(0.01, period_us=100_000, quota_us=1_000)
    for bad in (0.0, 0.009, -0.2, 1.01, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"between 0\.01 and 1"):
            CpuQuota.of(bad)


@pytest.fixture
def capped() -> Iterator[tuple[Cgroup | None, QuotaGroup]]:
    """A server cgroup (where v2 allows one) and a node group in it at 20 % of a CPU."""
    server = Cgroup.create("quota-test")
    try:
        group = node_group(CpuQuota.of(0.2), server, "quota-test", v1_cpu_root())
    except QuotaError as exc:
        if server is not None:
            server.remove()
        pytest.skip(f"no CPU quota on this machine: {exc}")
    yield server, group
    assert group.remove()
    if server is not None:
        assert server.remove()
    assert not group.path.exists()


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def test_a_spinning_process_under_a_fifth_of_a_cpu_gets_no_more_until_lifted(
    capped: tuple[Cgroup | None, QuotaGroup],
) -> None:
    server, group = capped
    argv = enter(group.procs_with(server), [sys.executable, "-c", SPIN])
    spinner = subprocess.Popen(argv)
    try:
        process = psutil.Process(spinner.pid)
        deadline = time.monotonic() + START_DEADLINE
        while cpu_seconds(process) < 0.05:  # python has started and spins
            assert time.monotonic() < deadline, "the spinner never ran"
            time.sleep(0.05)
        assert process.pid in {int(w) for w in (group.path / "cgroup.procs").read_text().split()}
        periods_before, throttled_before = group.throttling()
        cpu_before, wall_before = cpu_seconds(process), time.monotonic()
        time.sleep(WINDOW)  # the fixed measuring window
        cpu, wall = cpu_seconds(process) - cpu_before, time.monotonic() - wall_before
        periods_after, throttled_after = group.throttling()
        group.hold(capped=False)  # lifted (as while the bench's clients join)
        time.sleep(LIFTED_WINDOW)
        throttled_lifted = group.throttling()[1] - throttled_after
    finally:
        spinner.kill()
        spinner.wait()
    # Uncapped, a spinner takes a whole CPU when it can; capped, at most a fifth of it.
    assert cpu / wall < 0.5, f"{cpu:.2f} s of CPU in {wall:.2f} s under a 20 % quota"
    # The kernel did stop it at its quota, in most periods.
    assert throttled_after - throttled_before > (periods_after - periods_before) / 2 > 0
    assert throttled_lifted == 0


def test_where_no_cgroup_can_be_made_the_quota_is_refused_clearly(tmp_path: Path) -> None:
    quota = CpuQuota.of(0.2)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(QuotaError, match=r"cannot make a cgroup in .*file/root"):
        node_group(quota, None, "node", not_a_folder / "root")
    with pytest.raises(QuotaError, match="no CPU quota is possible here"):
        node_group(quota, None, "node", None)


def test_a_folder_that_is_no_cgroup_takes_no_quota_and_is_left_as_it_was(tmp_path: Path) -> None:
    # A plain folder: the group's folder is made, but it has no cpu.cfs_* files to write.
    with pytest.raises(QuotaError, match="takes no CPU quota"):
        node_group(CpuQuota.of(0.2), None, "../node", tmp_path)
    assert list(tmp_path.iterdir()) == []  # the folder it made is gone, no file was created


def test_a_hostile_label_stays_inside_the_root(
    capped: tuple[Cgroup | None, QuotaGroup],
) -> None:
    server, first = capped
    group = node_group(CpuQuota.of(0.2), server, "../../escape/" + "x" * 300, v1_cpu_root())
    try:
        assert group.path.parent == first.path.parent
        assert "/" not in group.path.name and len(group.path.name) < 100
    finally:
        assert group.remove()


def test_cgroup_v2_holds_the_quota_where_its_cpu_controller_is_available() -> None:
    server = Cgroup.create("quota-v2")
    if server is None:
        pytest.skip("no writable cgroup v2 hierarchy here")
    try:
        if "cpu" not in (server.path / "cgroup.controllers").read_text().split():
            pytest.skip("the cgroup v2 cpu controller is not available here (hybrid layout)")
        group = node_group(CpuQuota.of(0.2), server, "node", v1_cpu_root())
        assert group.interface == V2 and group.path.parent == server.path
        assert (group.path / "cpu.max").read_text().split() == ["2000", "10000"]
        assert group.procs_with(server) == [group.path / "cgroup.procs"]
        assert group.remove()
    finally:
        assert server.remove()
