"""Measure the idle CPU use of the full-screen client (a benchmark, not a test; Linux only).

Starts a server (`--server-command ... serve --data-dir TMP --tcp-port 0`, waiting for its
`listening tcp` log line), runs `papaya-chat` in a pseudo-terminal against it, lets it settle,
then reads the client's CPU time from /proc over `--seconds` of idling and prints the share of
one core it used. The original papayaChat client busy-polled at about 90 %.

    python -m papaya_clients.terminal.bench_idle --seconds 30
    python -m papaya_clients.terminal.bench_idle --server-command "/opt/papaya/bin/papaya-trio"
"""

from __future__ import annotations

import argparse
import os
import pty
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

LISTENING = re.compile(r"listening tcp [\d.]+:(\d+)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SETTLE_SECONDS = 2.0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def start_server(command: list[str], data_dir: Path) -> tuple[subprocess.Popen[str], int]:
    """Start the server and return it with the port from its `listening tcp` line."""
    server = subprocess.Popen(
        [*command, "serve", "--data-dir", str(data_dir), "--tcp-port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stderr is not None
    for line in server.stderr:
        if match := LISTENING.search(line):
            # Keep draining the log so the server never blocks on a full pipe.
            threading.Thread(target=server.stderr.read, daemon=True).start()
            return server, int(match.group(1))
    raise SystemExit(f"the server exited without logging 'listening tcp': {command}")


def drain(fd: int) -> None:
    """Read and discard the client's screen output until the terminal closes."""
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass  # EIO once the client has exited


def measure(server_command: list[str], seconds: float) -> float:
    """Return the client's CPU use over `seconds` of idling, in percent of one core."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        server, port = start_server(server_command, data_dir)
        master, slave = pty.openpty()
        env = {**os.environ, "TERM": "xterm-256color", "LANG": "C.UTF-8"}
        client = subprocess.Popen(
            [sys.executable, "-m", "papaya_clients.terminal", "--port", str(port)],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**env, "PAPAYA_KEY_FILE": str(data_dir / "key"), "PAPAYA_USER": "bench"},
            start_new_session=True,
        )
        os.close(slave)
        threading.Thread(target=drain, args=(master,), daemon=True).start()
        try:
            time.sleep(SETTLE_SECONDS)  # startup (imports, first draw) is not idle time
            if client.poll() is not None:
                raise SystemExit(f"the client exited early with status {client.returncode}")
            start_cpu, start_wall = cpu_seconds(client.pid), time.monotonic()
            time.sleep(seconds)
            used = cpu_seconds(client.pid) - start_cpu
            return 100 * used / (time.monotonic() - start_wall)
        finally:
            client.terminate()
            client.wait()
            os.close(master)
            server.terminate()
            server.wait()


def main() -> None:
    """Run the benchmark and print the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="idle time measured")
    parser.add_argument(
        "--server-command",
        default=f"{shlex.quote(sys.executable)} -m papaya_trio",
        help="command that takes 'serve --data-dir D --tcp-port 0' (default: papaya_trio)",
    )
    args = parser.parse_args()
    percent = measure(shlex.split(args.server_command), args.seconds)
    resolution = 100 / CLOCK_TICKS / args.seconds
    print(
        f"papaya-chat idle CPU: {percent:.3f} % of one core over {args.seconds:g} s"
        f" (resolution {resolution:.3f} %)"
    )


if __name__ == "__main__":
    main()
