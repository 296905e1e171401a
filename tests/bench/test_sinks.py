"""Every sink reads every byte and writes it out: what the comparison's fairness rests on."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from papaya_trio.bench.servers import SINK_ANNOUNCEMENT, SINK_MODES
from papaya_trio.bench.sink_trio import dense

PAYLOAD = b"message\n" * 5000  # 40,000 bytes per connection, more than one read


@pytest.mark.parametrize("mode", sorted(SINK_MODES))
async def test_sink_writes_out_every_byte_it_receives(mode: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with out.open("wb") as sink_stdout:
        process = await trio.lowlevel.open_process(
            # With a budget of 3 connections the sink exits once all three have ended,
            # after writing everything out.
            [sys.executable, "-m", *SINK_MODES[mode], "--port=0", "--max-connections=3"],
            stdout=sink_stdout,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    try:
        assert process.stderr is not None
        with trio.fail_after(20):
            line = b""
            while not line.endswith(b"\n"):
                line += await process.stderr.receive_some(1)
        match = re.match(SINK_ANNOUNCEMENT, line.decode())
        assert match is not None
        port = int(match.group(1))
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as conn:
                conn.sendall(PAYLOAD)
        with trio.fail_after(20):
            assert await process.wait() == 0
        assert out.read_bytes() == PAYLOAD * 3
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGTERM)
            await process.wait()
        if process.stderr is not None:
            await process.stderr.aclose()


WINDOW = 0.005


@pytest.mark.parametrize(
    ("ready", "since_last_pass", "window", "expected"),
    [
        (0, 0.001, WINDOW, False),  # nothing ready: block until the next arrival
        (1, 0.010, WINDOW, False),  # one arrival after a quiet spell: serve it at once
        (1, 0.001, WINDOW, True),  # arrivals closer than the window: batch them
        (2, 1.000, WINDOW, True),  # several sockets ready at once: batch
        (40, 0.005, WINDOW, True),
        (40, 0.001, 0.0, False),  # --coalesce 0: never wait
    ],
)
def test_the_batched_poller_waits_only_while_traffic_is_dense(
    ready: int, since_last_pass: float, window: float, expected: bool
) -> None:
    assert dense(ready, since_last_pass, window) is expected
