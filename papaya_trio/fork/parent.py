"""The supervising parent: listens, forks a process per connection, broadcasts, reaps, stops.

Theory of operation
-------------------
Start-up is trio mode's: hold the data folder's lock, load or create the key, recover the log
(trio mode's `ChatLog` recovery, run before anything is forked), then listen and log
``listening tcp HOST:PORT`` for every listener.

The parent then waits in ``poll()`` on its listeners, the notify pipe and its signal pipe, and
never blocks anywhere else:

- a connection: bring its own log index up to date (so the child inherits a current copy),
  create the client's wake pipe, fork (`client.serve_connection`). The child puts itself in a
  process group of its own, which its SEND inherits: the parent can then signal a client's
  pair as one, and a Ctrl-C in a terminal reaches the parent only.
- the notify pipe: poke every client's wake pipe (see `wakeup`); with ``fsync = "interval"``
  note that there is something to sync.
- SIGCHLD: reap every finished connection process and close its wake pipe.
- SIGTERM or SIGINT: stop accepting (close the listeners), send SIGTERM to every client's
  process group (native clients are told ``shutdown``), wait up to ``shutdown_deadline`` for
  them, SIGKILL what is left, reap, fsync the log and return (the program exits 0).

Appends are never interrupted by the shutdown: every process turns SIGTERM into a byte in a
pipe (`signals`) and looks at it only between appends.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import signal
import socket
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from papaya_trio.chatlog import FsyncPolicy
from papaya_trio.config import OPTIONS, ConfigError, ServerConfig
from papaya_trio.fork import wakeup
from papaya_trio.fork.client import ForkContext, run_child, serve_connection
from papaya_trio.fork.logfile import LogFile, open_index, recover_log
from papaya_trio.fork.signals import (
    WATCHED,
    SignalWatch,
    become_child,
    close_quietly,
    forking_safely,
)
from papaya_trio.server import ACCEPT_RETRY_DELAY, TRANSIENT_ACCEPT_ERRORS, format_address
from papaya_trio.service import (
    LOG_FILE,
    ServiceError,
    load_or_create_key,
    locked_data_dir,
    room_settings,
)

logger = logging.getLogger(__name__)

ACCEPT_BATCH = 64  # connections accepted per wake-up before the other sources get a turn
# Options that only mean something to the WebSocket transport. http_port is not among them: it
# has a default in every configuration (and the test harness sets it for both modes); fork mode
# just opens no HTTP listener and says so when it starts.
WEBSOCKET_OPTIONS = ("allowed_origins",)
# Options of TLS and of the plaintext port that exists because of it: fork mode has neither.
TLS_OPTIONS = ("tls_cert", "tls_key", "papaya_port")


def check_fork_config(config: ServerConfig) -> None:
    """Refuse WebSocket and TLS options: fork mode serves the TCP dialects only, in clear."""
    tls = [
        "--" + option.name.replace("_", "-")
        for option in OPTIONS
        if option.name in TLS_OPTIONS and getattr(config, option.name) != option.default
    ]
    if tls:
        raise ConfigError(f"fork mode does not serve TLS: drop {', '.join(tls)} or use --mode trio")
    given = [
        "--" + option.name.replace("_", "-")
        for option in OPTIONS
        if (option.name in WEBSOCKET_OPTIONS or option.name.startswith("ws_"))
        and getattr(config, option.name) != option.default
    ]
    if given:
        raise ConfigError(
            "fork mode serves the TCP dialects only, not WebSocket: "
            f"drop {', '.join(given)} or use --mode trio"
        )


def run_fork_service(config: ServerConfig) -> None:
    """Run the fork-mode server until SIGTERM or SIGINT, then stop every client's pair.

    Raises ConfigError, ServiceError, KeyFileError or LogCorrupted if it cannot start.
    """
    check_fork_config(config)
    data_dir = Path(config.data_dir)
    with locked_data_dir(data_dir):
        key = load_or_create_key(config.key_path)
        path = data_dir / LOG_FILE
        fsync = FsyncPolicy(config.fsync)
        recover_log(path, fsync)
        log = LogFile(path)
        try:
            index = open_index(log)
            logger.info("log %s: %d messages", path, index.head)
            signals = SignalWatch(WATCHED)  # before "listening": a SIGTERM from then on is ours
            listeners = open_listeners(config)
            try:
                notify_read, notify_write = wakeup.open_wake_pipe()
                context = ForkContext(
                    room_settings(config), key.encode(), path, fsync, index, notify_write
                )
                Supervisor(config, context, log, listeners, signals, notify_read).serve()
            finally:
                for listener in listeners:
                    listener.close()
            os.fsync(log.fd)
        finally:
            log.close()
        logger.info("stopped; log flushed")


def open_listeners(config: ServerConfig) -> list[socket.socket]:
    """Listen on every configured address ('*': all interfaces, IPv4 and IPv6), non-blocking."""
    listeners: list[socket.socket] = []
    try:
        for host in config.listen:
            for family, kind, proto, _, address in socket.getaddrinfo(
                None if host == "*" else host,
                config.tcp_port,
                type=socket.SOCK_STREAM,
                flags=socket.AI_PASSIVE,
            ):
                listener = socket.socket(family, kind, proto)
                listeners.append(listener)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                listener.bind(address)
                listener.listen(socket.SOMAXCONN)
                listener.setblocking(False)
                logger.info("listening tcp %s", format_address(listener.getsockname()))
    except OSError as exc:
        for listener in listeners:
            listener.close()
        why = exc.strerror or str(exc)
        raise ServiceError(f"cannot listen on port {config.tcp_port}: {why}") from None
    logger.info("fork mode: a process pair per client; no HTTP or WebSocket listener")
    return listeners


@dataclass(slots=True)
class ClientProcess:
    """A live connection process, as the parent tracks it."""

    label: str
    wake_fd: int


class Supervisor:
    """The parent's poll loop. `serve()` returns once every child has ended after a stop."""

    def __init__(
        self,
        config: ServerConfig,
        context: ForkContext,
        log: LogFile,
        listeners: list[socket.socket],
        signals: SignalWatch,
        notify_fd: int,
    ) -> None:
        self._config = config
        self._context = context
        self._log = log
        self._listeners = listeners
        self._notify_fd = notify_fd
        self._signals = signals
        self._clients: dict[int, ClientProcess] = {}
        self._unsynced = False
        self._last_sync = time.monotonic()

    def __repr__(self) -> str:
        return f"<Supervisor clients={len(self._clients)} head={self._context.index.head}>"

    def serve(self) -> None:
        """Accept, broadcast and reap until a stop signal; then shut down (see the module)."""
        poller = select.poll()
        for fd in [self._signals.fileno(), self._notify_fd, *self._listening_fds()]:
            poller.register(fd, select.POLLIN)
        while not self._signals.stop_requested:
            ready = {fd for fd, _ in poller.poll(self._sync_timeout_ms())}
            self._handle(ready)
            for listener in self._listeners:
                if listener.fileno() in ready:
                    self._accept(listener)
            self._sync_if_due()
        self._shutdown()

    def _listening_fds(self) -> list[int]:
        return [listener.fileno() for listener in self._listeners]

    def _handle(self, ready: set[int]) -> None:
        if self._signals.fileno() in ready:
            arrived = self._signals.take()
            if arrived & {signal.SIGTERM, signal.SIGINT}:
                name = signal.Signals(min(arrived - {signal.SIGCHLD})).name
                logger.info("%s received: shutting down", name)
            self._reap()
        if self._notify_fd in ready:
            self._broadcast()

    # --- connections ------------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno not in TRANSIENT_ACCEPT_ERRORS:
                    raise
                logger.error("accept failed, retrying shortly: %s", exc)
                time.sleep(ACCEPT_RETRY_DELAY)
                return
            try:
                self._spawn(sock, "tcp " + format_address(address))
            finally:
                sock.close()  # the child has its own copy

    def _spawn(self, sock: socket.socket, label: str) -> None:
        full = len(self._clients) >= self._config.max_connections
        with self._log.locked(fcntl.LOCK_SH):
            self._context.index.catch_up(self._log)
        wake_read, wake_write = wakeup.open_wake_pipe()
        connected_at = time.monotonic()
        with forking_safely():
            pid = os.fork()
            if pid == 0:
                os.setpgid(0, 0)
                child_signals = become_child(self._signals)
            else:
                with suppress(OSError):  # the child may have done it (or ended) already
                    os.setpgid(pid, pid)
                self._clients[pid] = ClientProcess(label, wake_write)
        if pid == 0:
            inherited = [self._notify_fd, self._log.fd, wake_write, *self._listening_fds()]
            close_quietly(inherited + [client.wake_fd for client in self._clients.values()])
            run_child(
                lambda: serve_connection(
                    sock,
                    self._context,
                    child_signals,
                    label=label,
                    wake_fd=wake_read,
                    full=full,
                    connected_at=connected_at,
                )
            )
        os.close(wake_read)

    def _broadcast(self) -> None:
        wakeup.drain(self._notify_fd)
        self._unsynced = True
        for client in self._clients.values():
            wakeup.poke(client.wake_fd)

    def _reap(self) -> None:
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            client = self._clients.pop(pid, None)
            if client is not None:
                os.close(client.wake_fd)

    # --- fsync = "interval" -----------------------------------------------------------------
    def _sync_timeout_ms(self) -> float | None:
        if self._context.fsync is not FsyncPolicy.INTERVAL or not self._unsynced:
            return None
        due = self._last_sync + self._config.fsync_interval
        return max(0.0, due - time.monotonic()) * 1000

    def _sync_if_due(self) -> None:
        timeout = self._sync_timeout_ms()
        if timeout is None or timeout > 0:
            return
        try:
            os.fsync(self._log.fd)
        except OSError as exc:
            logger.critical("interval fsync failed: %s", exc)
        self._unsynced = False
        self._last_sync = time.monotonic()

    # --- shutdown ---------------------------------------------------------------------------
    def _shutdown(self) -> None:
        for listener in self._listeners:
            listener.close()
        logger.info("shutting down: %d connections to close", len(self._clients))
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self._config.shutdown_deadline
        poller = select.poll()
        poller.register(self._signals.fileno(), select.POLLIN)
        poller.register(self._notify_fd, select.POLLIN)
        while self._clients and (left := deadline - time.monotonic()) > 0:
            self._handle({fd for fd, _ in poller.poll(left * 1000)})
        if self._clients:
            logger.warning("shutdown deadline passed: dropping %d", len(self._clients))
            self._signal_all(signal.SIGKILL)
            for pid in list(self._clients):
                os.waitpid(pid, 0)
                os.close(self._clients.pop(pid).wake_fd)

    def _signal_all(self, signum: int) -> None:
        for pid in self._clients:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signum)
