"""A cgroup v2 per measured server: every process its command starts, however it detaches.

A server that daemonizes (forks, calls ``setsid``, forks again and lets its parent exit)
leaves the process tree and the process group the bench started: sampling the tree of the
pid the bench knows would miss it, and stopping that process group would leave it running.
A cgroup holds it anyway: a process stays in its parent's cgroup across ``fork``, ``setsid``
and ``exec``, and only a process with write access to another cgroup's ``cgroup.procs``
leaves it. So each measured server is started inside a fresh cgroup of its own:

- the command is wrapped in ``sh -c 'echo $$ > …/cgroup.procs && exec "$@"'`` (`enter`):
  the shell moves itself into the cgroup and then becomes the command, so the command's
  very first instruction already runs inside it (no fork can slip out before the move); a
  node with a CPU quota (`cpuquota`) enters its quota's cgroup the same way, a child of
  this one (cgroup v2) or one in the v1 cpu hierarchy;
- ``cpu.stat``'s ``usage_usec`` is the CPU time of every process that ever ran in the
  cgroup, the ones that exited included (cgroup v2 keeps it whether or not the cpu
  controller is enabled), with the scheduler's precision;
- ``cgroup.procs`` lists its live processes (for memory and context switches), with those of
  its children (the nodes' quota cgroups, under cgroup v2);
- stopping: ``cgroup.kill`` (Linux 5.14) kills every process in it at once, else each is
  sent SIGKILL; the empty cgroup is then removed.

It needs a writable cgroup v2 hierarchy (root, or a delegated subtree): `Cgroup.create`
returns None where there is none, and the bench falls back to the listening port's owner
(`processes`).
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import signal
from collections.abc import Sequence
from pathlib import Path

_MOUNTS = Path("/proc/self/mounts")
_OWN_CGROUP = Path("/proc/self/cgroup")
_names = itertools.count()
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_LABEL_CHARS = 64


def mounts_and_own() -> tuple[list[str], list[str]] | None:
    """The lines of /proc/self/mounts and of /proc/self/cgroup (None if unreadable)."""
    try:
        return _MOUNTS.read_text().splitlines(), _OWN_CGROUP.read_text().splitlines()
    except OSError:
        return None


def unified_root() -> Path | None:
    """Where this process's cgroup v2 folder is, if the unified hierarchy is mounted."""
    if (tables := mounts_and_own()) is None:
        return None
    mounts, own = tables
    mount = next((line.split()[1] for line in mounts if line.split()[2:3] == ["cgroup2"]), None)
    # In cgroup v2 (and in the unified part of a hybrid setup) the line is "0::/path".
    path = next((line[3:] for line in own if line.startswith("0::")), None)
    if mount is None or path is None:
        return None
    return Path(mount) / path.lstrip("/")


def group_name(label: str) -> str:
    """A fresh cgroup folder name for this process: `label` (a server's name, which may come
    from the command line) only decorates it: anything but letters, digits, ``.``, ``_``
    and ``-`` becomes ``_``, and it is cut short."""
    tag = _UNSAFE.sub("_", label)[:_LABEL_CHARS]
    return f"papaya-bench-{os.getpid()}-{next(_names)}-{tag}"


def remove_group(path: Path) -> bool:
    """Remove the cgroup folder `path`; False while a process is still in it."""
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def read_stat(path: Path) -> dict[str, int]:
    """A cgroup's ``cpu.stat`` (``name value`` lines) as a dict."""
    values = {}
    for line in path.read_text().splitlines():
        name, _, value = line.partition(" ")
        values[name] = int(value)
    return values


def enter(procs: Sequence[Path], argv: list[str]) -> list[str]:
    """`argv`, run so that it starts inside the cgroups whose ``cgroup.procs`` are `procs`."""
    moves = "".join(f"echo $$ > {shlex.quote(str(path))} && " for path in procs)
    return ["/bin/sh", "-c", moves + 'exec "$@"', "papaya-bench", *argv]


class Cgroup:
    """One cgroup v2 folder, made for one server and removed after it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, label: str) -> Cgroup | None:
        """A fresh cgroup under this process's own, or None where that is not allowed;
        `label` decorates its name (`group_name`)."""
        root = unified_root()
        if root is None:
            return None
        path = root / group_name(label)
        try:
            path.mkdir()
        except OSError:
            return None
        if not (path / "cpu.stat").exists():  # a kernel too old to account CPU here
            path.rmdir()
            return None
        return cls(path)

    @property
    def procs(self) -> Path:
        """The file a process writes its pid to, to enter the cgroup."""
        return self.path / "cgroup.procs"

    def pids(self) -> set[int]:
        """The live processes in the cgroup and in its children."""
        pids = set()
        for procs in (self.procs, *self.path.glob("*/cgroup.procs")):
            try:
                pids |= {int(word) for word in procs.read_text().split()}
            except OSError:
                continue
        return pids

    def cpu_seconds(self) -> float:
        """CPU time used in the cgroup so far, by live and exited processes alike."""
        stat = read_stat(self.path / "cpu.stat")
        if "usage_usec" not in stat:
            raise OSError(f"no usage_usec in {self.path / 'cpu.stat'}")
        return stat["usage_usec"] / 1e6

    def kill(self) -> None:
        """SIGKILL to every process in the cgroup."""
        try:
            (self.path / "cgroup.kill").write_text("1")
            return
        except OSError:
            pass  # before Linux 5.14: one by one
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue

    def remove(self) -> bool:
        """Remove the cgroup; False while a process is still in it."""
        return remove_group(self.path)
