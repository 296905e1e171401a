"""What the bench asks of the operating system beyond CPUs: file descriptors, idle CPUs.

Idle CPUs: when a CPU has nothing to run it normally halts, and waking it costs time. On a
virtual machine a halt and the wake-up after it are trips through the hypervisor, whose
cost varies with what the host is doing and lands partly on the process that runs next:
here the 500 ms CPU samples of both sinks jumped between two levels for seconds at a time
(Cv about 0.2) and a forked sink, which sleeps and wakes once per arrival, paid the most.
`idle_polling` asks the kernel to keep idle CPUs polling instead (the PM QoS request of
``/dev/cpu_dma_latency``; the request holds while the file stays open and ends when it is
closed, so nothing outlives the sweep).
"""

from __future__ import annotations

import os
import resource
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PM_QOS_DEVICE = Path("/dev/cpu_dma_latency")
#: What a sweep ran with: idle CPUs polling, or the system's own idle states.
IDLE_POLL = "poll"
IDLE_SYSTEM = "system"


def raise_open_file_limit(needed: int) -> int:
    """Raise this process's soft open-file limit to at least `needed` (children inherit it).

    Returns the new soft limit. Raises OSError when the hard limit is lower than `needed`:
    only an administrator can raise it (``ulimit -Hn``, ``/etc/security/limits.conf``).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise OSError(f"{needed} open files are needed but the hard limit is {hard} (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


def _request_no_idle_latency(device: Path) -> tuple[int | None, str]:
    """Open `device` and ask for 0 µs of wake-up latency: (fd, "") or (None, why not)."""
    try:
        fd = os.open(device, os.O_WRONLY)
    except OSError as exc:
        return None, f"{device}: {exc.strerror}"
    try:
        os.write(fd, struct.pack("=i", 0))
    except OSError as exc:
        os.close(fd)
        return None, f"{device}: {exc.strerror}"
    return fd, ""


@contextmanager
def idle_polling(wanted: str, device: Path = PM_QOS_DEVICE) -> Iterator[str]:
    """Keep idle CPUs polling while the block runs, when `wanted` is ``poll`` and allowed.

    Yields what the block runs with: ``poll``, ``system``, or ``system (...)`` saying why
    polling could not be had (the device is root-only on most systems, absent on others).
    """
    if wanted != IDLE_POLL:
        yield IDLE_SYSTEM
        return
    fd, why_not = _request_no_idle_latency(device)
    if fd is None:
        yield f"{IDLE_SYSTEM} (idle polling unavailable: {why_not})"
        return
    try:
        yield IDLE_POLL
    finally:
        os.close(fd)
