"""The bench's requests to the operating system: the idle-polling request is held, then let go."""

from __future__ import annotations

import os
from pathlib import Path

from papaya_trio.bench.system import idle_polling


def open_fds_on(path: Path) -> int:
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            if os.readlink(fd) == str(path):
                count += 1
        except OSError:
            continue  # the directory's own fd, closed while listing
    return count


def test_polling_holds_a_zero_latency_request_for_the_block_only(tmp_path: Path) -> None:
    device = tmp_path / "cpu_dma_latency"  # a file stands in for the kernel's device
    device.write_bytes(b"")
    with idle_polling("poll", device) as state:
        assert state == "poll"
        assert device.read_bytes() == b"\x00\x00\x00\x00"  # a 32-bit 0: no wake-up latency
        assert open_fds_on(device) == 1  # the request lasts while the file is open
    assert open_fds_on(device) == 0


def test_polling_that_cannot_be_had_says_why_and_runs_anyway(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    ran = False
    with idle_polling("poll", missing) as state:
        ran = True
    assert ran
    assert state == f"system (idle polling unavailable: {missing}: No such file or directory)"


def test_system_idle_leaves_the_device_alone(tmp_path: Path) -> None:
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"untouched")
    with idle_polling("system", device) as state:
        assert state == "system"
        assert open_fds_on(device) == 0
    assert device.read_bytes() == b"untouched"
