"""Which processes are a measured server's, and how they all stop.

A `ServerProcesses` answers, at every sample, "which processes belong to this server?" and,
where it can, "how much CPU has the server used so far, exited processes included?":

- **in a cgroup** (`cgroup.Cgroup`, the normal case as root): its members, and its
  ``cpu.stat``. This counts everything the command started, a daemon that double-forked
  and its per-client children included, and nothing else.
- **otherwise**: the process tree of each process the bench started, together with the
  tree of every process that holds one of the server's listening sockets (the socket's
  inode from ``/proc/net/tcp`` and ``tcp6``, then the ``/proc/*/fd`` link that points to
  it). A daemon that left the bench's tree still owns its listening socket, and the
  children it forks per client are in its tree. The owners are looked up once, when the
  server listens (a scan of every process's descriptors is too slow for every sample);
  CPU is then summed over the live processes, so a process that exited between two
  samples loses the time it used in that interval.

`stop` ends them all: SIGTERM to every one of them, a grace period, then SIGKILL to whatever
is left, each wait bounded; `close` then removes the nodes' CPU quota cgroups (`cpuquota`)
and the cgroup.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Iterable, Sequence
from pathlib import Path

import psutil
import trio

from papaya_trio.bench.cgroup import Cgroup
from papaya_trio.bench.cpuquota import QuotaGroup

_PROC = Path("/proc")
_LISTEN = "0A"
#: How often `stop` looks whether the processes are gone.
_POLL = 0.05
#: How long SIGKILLed processes may take to disappear.
KILL_TIMEOUT = 5.0


def listening_inodes(port: int, tables: Iterable[Path] | None = None) -> set[int]:
    """Inodes of the sockets listening on TCP `port` (any address, IPv4 or IPv6)."""
    found: set[int] = set()
    for table in tables or (_PROC / "net" / "tcp", _PROC / "net" / "tcp6"):
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            if int(fields[1].rpartition(":")[2], 16) == port:
                found.add(int(fields[9]))
    return found


def socket_owners(inodes: set[int]) -> set[int]:
    """Pids of the processes holding any of the sockets `inodes` open."""
    targets = {f"socket:[{inode}]" for inode in inodes}
    owners: set[int] = set()
    if not targets:
        return owners
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            descriptors = list((entry / "fd").iterdir())
        except OSError:
            continue  # gone, or not ours to read
        for descriptor in descriptors:
            try:
                if os.readlink(descriptor) in targets:
                    owners.add(int(entry.name))
                    break
            except OSError:
                continue
    return owners


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class ServerProcesses:
    """The processes of one measured server: in `group`, or below `roots` and the owners of
    the ports given to `find_listeners` (see the module docstring)."""

    def __init__(self, roots: Sequence[int], group: Cgroup | None) -> None:
        self.roots = list(roots)
        self.group = group
        #: The nodes' CPU quota cgroups, if they run under a quota.
        self.quotas: list[QuotaGroup] = []
        self._owners: set[int] = set()
        #: Every process seen so far, so that `stop` finds those the lookups lose track of.
        self._seen: dict[int, psutil.Process] = {}

    def find_listeners(self, ports: Iterable[int]) -> None:
        """Note the owners of `ports`' listening sockets (needed only without a cgroup)."""
        if self.group is None:
            inodes = set().union(*(listening_inodes(port) for port in ports))
            self._owners |= socket_owners(inodes)

    def processes(self) -> list[psutil.Process]:
        """The server's processes now."""
        if self.group is not None:
            pids = self.group.pids()
        else:
            pids = {p.pid for root in [*self.roots, *self._owners] for p in _tree(root)}
        found = []
        for pid in sorted(pids):
            if (process := self._seen.get(pid)) is None:
                try:
                    process = self._seen[pid] = psutil.Process(pid)
                except psutil.NoSuchProcess:
                    continue
            found.append(process)
        return found

    def cpu_seconds(self) -> float | None:
        """CPU used so far by every process that ever belonged to the server, where known."""
        return self.group.cpu_seconds() if self.group is not None else None

    def _alive(self) -> list[psutil.Process]:
        self.processes()
        alive = []
        for process in self._seen.values():
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
            except psutil.NoSuchProcess:
                continue
        return alive

    async def _wait_gone(self, seconds: float) -> bool:
        for _ in range(math.ceil(seconds / _POLL)):
            if not self._alive():
                return True
            await trio.sleep(_POLL)
        return not self._alive()

    async def stop(self, grace: float) -> None:
        """SIGTERM every process, wait up to `grace` seconds, then SIGKILL the rest.

        Every process gets the SIGTERM, as from a signal to a process group: a daemon's
        per-client children need not depend on their parent passing it on. Shielded from
        cancellation: a sweep that is stopped still stops its servers.
        """
        with trio.CancelScope(shield=True):
            for process in self._alive():
                try:
                    process.send_signal(signal.SIGTERM)
                except psutil.NoSuchProcess:
                    continue
            if not await self._wait_gone(grace):
                if self.group is not None:
                    self.group.kill()
                for process in self._alive():
                    try:
                        process.kill()
                    except psutil.NoSuchProcess:
                        continue
                await self._wait_gone(KILL_TIMEOUT)

    async def close(self) -> None:
        """Remove the quota cgroups, then the cgroup, once the processes the caller started
        have been reaped (a zombie still counts as a member); shielded from cancellation."""
        groups: list[Cgroup | QuotaGroup] = [*self.quotas, *([self.group] if self.group else [])]
        with trio.CancelScope(shield=True):
            for _ in range(math.ceil(KILL_TIMEOUT / _POLL)):
                groups = [group for group in groups if not group.remove()]
                if not groups:
                    return
                await trio.sleep(_POLL)
