"""A real `redis-server` for the tests: own temporary folder, free port, AOF on."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

START_TIMEOUT = 10.0


def free_port(avoid: int = 0) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, other than `avoid` (the
    kernel may hand out a port just closed again: two calls once gave tcp and http one port)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != avoid:
            return port
    raise RuntimeError(f"the kernel kept handing out port {avoid}")


class RedisServer:
    """One redis-server process; `start` again after `kill` or `stop` reuses port and folder."""

    def __init__(self, folder: Path, appendfsync: str = "always", *extra: str) -> None:
        self.folder = folder
        self.appendfsync = appendfsync
        self.extra = extra
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket_path(self) -> Path:
        return self.folder / "redis.sock"

    def start(self) -> None:
        """Start the server and wait (bounded) until it answers PING."""
        executable = shutil.which("redis-server")
        assert executable, "redis-server is not installed (apt-get install redis-server)"
        self.process = subprocess.Popen(
            [
                executable,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--unixsocket", str(self.socket_path),
                "--dir", str(self.folder),
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", self.appendfsync,
                "--logfile", str(self.folder / "redis.log"),
                *self.extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                log = (self.folder / "redis.log").read_text(errors="replace")
                raise RuntimeError(f"redis-server did not start:\n{log}")
            time.sleep(0.02)

    def ping(self) -> bool:
        """True if the server answers PING now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def wait_replica_synced(self) -> None:
        """Wait (bounded) until this replica reports its link to the primary up."""
        deadline = time.monotonic() + START_TIMEOUT
        while b"master_link_status:up" not in self._info_replication():
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync with its primary")
            time.sleep(0.02)

    def _info_replication(self) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
            sock.sendall(b"INFO replication\r\n")
            reply = b""
            while not reply.endswith(b"\r\n\r\n") and len(reply) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
            return reply

    def pause(self) -> None:
        """SIGSTOP: the process keeps its connections but does nothing (a stalled replica)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: what a crash or a power cut does to the process."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """A clean SIGTERM shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
