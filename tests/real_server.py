"""Real `papaya-trio serve` processes on loopback for the integration tests."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import trio

from tests.flood import connect_from
from tests.memory_world import LineClient

LISTENING = re.compile(r"listening tcp (\S+):(\d+)")
HTTP_LISTENING = re.compile(r"listening http (https?://(\S+):(\d+)/)")
START_TIMEOUT = 20.0


class RunningServer:
    """A `papaya-trio serve` child process; its log goes to a file you can read."""

    def __init__(self, data_dir: Path, args: list[str]) -> None:
        self.data_dir = data_dir
        self.args = args
        self.log_path = data_dir.parent / f"{data_dir.name}-server-{time.monotonic_ns()}.log"
        self._log_file = self.log_path.open("wb")
        command = [sys.executable, "-m", "papaya_trio", "serve", "--data-dir", str(data_dir)]
        self.process = subprocess.Popen(
            [*command, *args],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            self.port = self._wait_for_port()
        except RuntimeError:
            self.kill()
            raise
        # A trio-mode server logs its http listeners before its tcp ones, so they are in the
        # log by now; a mode without an HTTP port logs none.
        http = HTTP_LISTENING.search(self.log)
        self.http_port = int(http.group(3)) if http else None
        self.url = http.group(1) if http else None

    @property
    def key(self) -> str:
        return (self.data_dir / "key").read_text().strip()

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if match := LISTENING.search(self.log_path.read_text()):
                return int(match.group(2))
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log}")
            time.sleep(0.02)
        raise RuntimeError(f"server did not start listening:\n{self.log}")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the server and wait for it to exit; return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        finally:
            self._log_file.close()

    def kill(self) -> None:
        """Stop the server the hard way (test teardown)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log_file.close()


class ServerFactory:
    """Starts servers in one mode and makes sure none outlives the test."""

    def __init__(self, tmp_path: Path, mode: str) -> None:
        self.tmp_path = tmp_path
        self.mode = mode
        self.started: list[RunningServer] = []

    def start(
        self, *args: str, data_dir: Path | None = None, port: int = 0, http_port: int = 0
    ) -> RunningServer:
        """Start a server; a port 0 picks a free one, another reuses e.g. a stopped server's."""
        data_dir = data_dir or self.tmp_path / "data"
        mode_args = ["--mode", self.mode] if self.mode != "trio" else []
        listen = ["--listen", "127.0.0.1", "--tcp-port", str(port)]
        if self.mode != "fork":  # fork mode opens no HTTP port and refuses --http-port
            listen += ["--http-port", str(http_port)]
        server = RunningServer(data_dir, [*mode_args, *listen, *args])
        self.started.append(server)
        return server

    def cleanup(self) -> None:
        for server in self.started:
            server.kill()


class Dialer:
    """Opens client connections and closes them all when the test ends."""

    def __init__(self) -> None:
        self.streams: list[trio.SocketStream] = []

    async def connect(
        self, port: int, host: str = "127.0.0.1", *, source: str | None = None
    ) -> trio.SocketStream:
        """A connection to `host`, or to 127.0.0.1 from the loopback address `source`."""
        if source is None:
            stream = await trio.open_tcp_stream(host, port)
        else:
            stream = await connect_from(source, port)
        self.streams.append(stream)
        return stream

    async def native(
        self, server: RunningServer, user: str, *, source: str | None = None, **hello: object
    ) -> LineClient:
        client = LineClient(await self.connect(server.port, source=source))
        await client.hello(user, key=server.key, **hello)
        return client

    async def papaya(self, server: RunningServer) -> trio.SocketStream:
        stream = await self.connect(server.port)
        await stream.send_all(server.key.encode())
        return stream
