"""A CPU quota per server node (``--node-cpu``): each node may use at most a fraction of a CPU.

On a machine with fewer CPUs than nodes, Redis and the load generator together, a node
that saturates a whole CPU leaves nothing for the others: the generator runs out first and
the bench measures the generator. A quota makes a node saturate at a fraction of a CPU, so
what a second node adds shows while the rest of the machine keeps up.

The kernel's CFS bandwidth control enforces it: in every period of `CpuQuota.period_us` a
node runs at most `CpuQuota.quota_us`, then waits for the next period. The period is short
(10 ms, longer only where the quota would fall under the kernel's 1 ms minimum), so a
throttled node waits at most a few milliseconds, not the default period's 100 ms that would
show as latency of its own.

Each node gets a cgroup of its own with the quota (`node_group`), which the node's process
enters before it execs, as it enters the server's measuring cgroup (`cgroup`):

- **cgroup v2** where its cpu controller is available to the server's cgroup (listed in its
  ``cgroup.controllers``): the node's group is a child of the server's, the server's
  ``cgroup.subtree_control`` gets ``+cpu``, and the child's ``cpu.max`` the quota; the
  server's ``cpu.stat`` still counts every child;
- **cgroup v1** otherwise, where the cpu controller is mounted apart (a hybrid layout): a new
  group in the cpu hierarchy, beside this process's own, with ``cpu.cfs_period_us`` and
  ``cpu.cfs_quota_us``;
- neither: `QuotaError`, so the bench refuses ``--node-cpu`` rather than run uncapped.

The quota can be lifted and set again (`QuotaGroup.hold`): the bench lifts it while the
load generator's clients join (a thousand native joins cost half a million presence
deliveries, minutes at a fifth of a CPU, and are not what is measured) and sets it again
once they all have, before the warm-up and the measured window. The group is removed once
its processes are gone (`QuotaGroup.remove`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from papaya_trio.bench.cgroup import Cgroup, group_name, mounts_and_own, read_stat, remove_group

#: The period the quota is counted over, unless the quota would be under the kernel's minimum.
PERIOD_US = 10_000
#: The kernel's bounds: a quota of at least 1 ms, a period of at most 1 s.
MIN_QUOTA_US = 1_000
MAX_PERIOD_US = 1_000_000
#: The smallest and largest fraction of one CPU a node may be given.
MIN_FRACTION = 0.01
MAX_FRACTION = 1.0
V2 = "cgroup v2 cpu.max"
V1 = "cgroup v1 cpu.cfs_quota_us"


class QuotaError(Exception):
    """No CPU quota can be set here."""


@dataclass(frozen=True)
class CpuQuota:
    """At most `fraction` of one CPU: `quota_us` of CPU time in every `period_us`."""

    fraction: float
    period_us: int
    quota_us: int

    @classmethod
    def of(cls, fraction: float) -> CpuQuota:
        """The quota for `fraction` of a CPU; ValueError outside 0.01..1."""
        if not MIN_FRACTION <= fraction <= MAX_FRACTION:  # NaN fails too
            raise ValueError(
                f"a node's CPU share must be between {MIN_FRACTION} and {MAX_FRACTION:g}"
            )
        period = max(PERIOD_US, math.ceil(MIN_QUOTA_US / fraction))
        period = min(period, MAX_PERIOD_US)
        return cls(fraction, period, max(MIN_QUOTA_US, round(fraction * period)))


def v1_cpu_root() -> Path | None:
    """This process's folder in the cgroup v1 cpu hierarchy, if one is mounted."""
    if (tables := mounts_and_own()) is None:
        return None
    mounts, own = tables
    for line in mounts:
        fields = line.split()
        if fields[2:3] == ["cgroup"] and "cpu" in fields[3].split(","):
            mount = Path(fields[1])
            break
    else:
        return None
    for line in own:  # "4:cpu,cpuacct:/path"
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return mount / path.lstrip("/")
    return None


def _write(path: Path, text: str) -> None:
    """Write an existing control file (never create one: a plain folder is no cgroup)."""
    descriptor = os.open(path, os.O_WRONLY)
    try:
        os.write(descriptor, text.encode())
    finally:
        os.close(descriptor)


class QuotaGroup:
    """One node's cgroup with its CPU quota."""

    def __init__(self, path: Path, quota: CpuQuota, interface: str) -> None:
        self.path = path
        self.quota = quota
        #: Which kernel interface holds the quota (`V2` or `V1`).
        self.interface = interface

    def procs_with(self, server: Cgroup | None) -> list[Path]:
        """The ``cgroup.procs`` files a node of `server` writes its pid to: the server's
        (to be measured) and this group's, or this group's alone where it is a child of the
        server's (cgroup v2, where a parent with controllers for its children holds no
        process of its own)."""
        if server is None or self.path.parent == server.path:
            return [self.path / "cgroup.procs"]
        return [server.procs, self.path / "cgroup.procs"]

    def hold(self, capped: bool) -> None:
        """Hold the group to its quota, or (`capped` False) let it use a whole CPU again;
        OSError if the kernel refuses."""
        if self.interface == V2:
            limit = str(self.quota.quota_us) if capped else "max"
            _write(self.path / "cpu.max", f"{limit} {self.quota.period_us}")
        else:
            _write(self.path / "cpu.cfs_quota_us", str(self.quota.quota_us) if capped else "-1")

    def throttling(self) -> tuple[int, int]:
        """(periods in which the group ran, periods in which it was throttled) so far."""
        stat = read_stat(self.path / "cpu.stat")
        return stat["nr_periods"], stat["nr_throttled"]

    def remove(self) -> bool:
        """Remove the group; False while a process is still in it."""
        return remove_group(self.path)

    def to_json(self) -> dict[str, object]:
        """The quota, as the trial's JSON records it."""
        return {
            "fraction": self.quota.fraction,
            "period_us": self.quota.period_us,
            "quota_us": self.quota.quota_us,
            "interface": self.interface,
        }


def _v2_group(quota: CpuQuota, server: Cgroup, name: str) -> QuotaGroup | None:
    """A child of `server` with ``cpu.max``, where its cpu controller is available."""
    try:
        available = (server.path / "cgroup.controllers").read_text().split()
    except OSError:
        return None
    if "cpu" not in available:
        return None
    try:
        _write(server.path / "cgroup.subtree_control", "+cpu")
        (server.path / name).mkdir()
    except OSError:
        return None
    group = QuotaGroup(server.path / name, quota, V2)
    try:
        group.hold(capped=True)
    except OSError:
        group.remove()
        return None
    return group


def _v1_group(quota: CpuQuota, root: Path, name: str) -> QuotaGroup:
    """A new group in the v1 cpu hierarchy at `root`; QuotaError saying why it can't be."""
    path = root / name
    try:
        path.mkdir()
    except OSError as exc:
        raise QuotaError(f"cannot make a cgroup in {root}: {exc.strerror}") from None
    group = QuotaGroup(path, quota, V1)
    try:
        # The period first: the quota is checked against it.
        _write(path / "cpu.cfs_period_us", str(quota.period_us))
        group.hold(capped=True)
    except OSError as exc:
        group.remove()
        raise QuotaError(f"{root} takes no CPU quota ({exc.strerror})") from None
    return group


def node_group(
    quota: CpuQuota, server: Cgroup | None, label: str, v1_root: Path | None
) -> QuotaGroup:
    """A cgroup held to `quota` for one node of a server: a child of the server's cgroup
    `server` where cgroup v2's cpu controller is available to it, else a new group under
    `v1_root` (`v1_cpu_root()` for the real one); QuotaError where neither can be made.

    `label` decorates the group's name (`cgroup.group_name`).
    """
    name = group_name(label)
    if server is not None and (group := _v2_group(quota, server, name)) is not None:
        return group
    if v1_root is None:
        raise QuotaError(
            "no CPU quota is possible here: the cgroup v2 cpu controller is not available to"
            " the bench's cgroups and no cgroup v1 cpu hierarchy is mounted"
        )
    return _v1_group(quota, v1_root, name)


def check_available(quota: CpuQuota, v1_root: Path | None) -> str:
    """Which interface a node's quota would use here (a probe group made and removed);
    QuotaError where none can be set."""
    server = Cgroup.create("probe")
    try:
        group = node_group(quota, server, "probe", v1_root)
        group.remove()
        return group.interface
    finally:
        if server is not None:
            server.remove()
