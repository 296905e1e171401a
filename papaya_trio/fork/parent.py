"""The supervising parent: listens, forks a process per connection, broadcasts, reaps, stops.

Theory of operation
-------------------
Start-up is trio mode's: hold the lock on the log (`loglock`), load or create the key, recover
the log (trio mode's `ChatLog` recovery, run before anything is forked), then listen and log
``listening tcp HOST:PORT`` for every listener.

The parent then waits in ``poll()`` on its listeners, the notify pipe, its signal pipe and the
sockets it is refusing, and never blocks anywhere else:

- a connection: with ``max_connections`` connection processes alive it gets none and is
  refused by the parent itself (`overload.Refusals`). Otherwise bring the parent's log index up
  to date (so the child inherits a current copy), create the client's wake pipe, fork
  (`client.serve_connection`). If ``accept``, the pipe or the fork fail for lack of
  descriptors, memory or processes, the parent closes that connection, logs once and stops
  accepting for a moment (`overload.Exhaustion`); it never crashes for it.
- in the child, first: ask to die with the parent (`signals.die_with_parent`), then close
  every descriptor of the parent's, the log's lock among them, so that only the parent
  holds the log and a restart after the parent died is never refused by an orphan. The
  child puts itself in a process group of its own, which its SEND inherits: the parent can
  then signal a client's pair as one, and a Ctrl-C in a terminal reaches the parent only.
- the notify pipe: poke every client's wake pipe (see `wakeup`); with ``fsync = "interval"``
  note that there is something to sync.
- SIGCHLD: reap every finished connection process and close its wake pipe.
- SIGHUP (a service manager's reload): logged; fork mode has nothing to reload.
- with ``metrics = "HOST:PORT"``: scrapes of the parent's own figures (`scrapes`).
- SIGTERM or SIGINT: stop accepting (close the listeners), send SIGTERM to every client's
  process group (native clients are told ``shutdown``), wait up to ``shutdown_deadline`` for
  them, SIGKILL what is left, reap, fsync the log and return (the program exits 0).

Appends are never interrupted by the shutdown: every process turns SIGTERM into a byte in a
pipe (`signals`) and looks at it only between appends.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Collection
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from papaya_trio.chatlog import FsyncPolicy
from papaya_trio.config import OPTIONS, ConfigError, ServerConfig
from papaya_trio.fork import wakeup
from papaya_trio.fork.client import ForkContext, run_child, serve_connection
from papaya_trio.fork.logfile import DurableEnd, LogFile, open_index, recover_log
from papaya_trio.fork.overload import EXHAUSTION_ERRORS, Exhaustion, Refusals
from papaya_trio.fork.scrapes import FORK_METRICS, Scrapes
from papaya_trio.fork.signals import (
    WATCHED,
    SignalWatch,
    become_child,
    close_quietly,
    forking_safely,
)
from papaya_trio.keepalive import set_tcp_keepalive
from papaya_trio.metrics import METRICS_PATH, Metrics
from papaya_trio.server import format_address
from papaya_trio.service import (
    LOG_FILE,
    ServiceError,
    listen_failure,
    load_accounts,
    load_or_create_key,
    locked_data_dir,
    room_settings,
    tcp_keepalive,
)

logger = logging.getLogger(__name__)

ACCEPT_BATCH = 64  # connections accepted per wake-up before the other sources get a turn
# Options that only mean something to the WebSocket transport. http_port is not among them: it
# has a default in every configuration (and the test harness sets it for both modes); fork mode
# just opens no HTTP listener and says so when it starts.
WEBSOCKET_OPTIONS = ("allowed_origins",)
# Options of TLS and of the plaintext port that exists because of it: fork mode has neither.
TLS_OPTIONS = ("tls_cert", "tls_key", "papaya_port")
# trio mode's admission control and per-member limits: fork mode's parent has its own, simpler
# rules (docs/security.md), so these would be ignored there.
TRIO_LIMIT_OPTIONS = (
    "max_handshakes",
    "max_connections_per_ip",
    "max_handshakes_per_ip",
    "pressure_auth_timeout",
    "wrong_key_rate",
    "wrong_key_burst",
    "auth_log_interval",
    "idle_timeout",
    "rate_messages",
    "rate_burst",
    "rate_bytes",
    "rate_burst_bytes",
)


def _given(config: ServerConfig, names: Collection[str]) -> list[str]:
    """The flags among `names` whose values differ from their defaults."""
    return [
        "--" + option.name.replace("_", "-")
        for option in OPTIONS
        if option.name in names and getattr(config, option.name) != option.default
    ]


def check_fork_config(config: ServerConfig) -> None:
    """Refuse HTTP, WebSocket, TLS and trio mode's limit options: fork mode serves the TCP dialects
    only, in clear, with its own limits."""
    if tls := _given(config, TLS_OPTIONS):
        raise ConfigError(f"fork mode does not serve TLS: drop {', '.join(tls)} or use --mode trio")
    if limits := _given(config, TRIO_LIMIT_OPTIONS):
        raise ConfigError(
            f"fork mode has none of trio mode's admission and rate limits: drop "
            f"{', '.join(limits)} or use --mode trio"
        )
    web = ["http_port", *WEBSOCKET_OPTIONS, *(o.name for o in OPTIONS if o.name.startswith("ws_"))]
    if given := _given(config, web):
        raise ConfigError(
            "fork mode serves the TCP dialects only, not HTTP or WebSocket: "
            f"drop {', '.join(given)} or use --mode trio"
        )


def run_fork_service(config: ServerConfig) -> None:
    """Run the fork-mode server until SIGTERM or SIGINT, then stop every client's pair.

    Every listener is bound before anything is written (data folder, key, log). Raises
    ConfigError, ServiceError, KeyFileError or LogCorrupted if it cannot start.
    """
    check_fork_config(config)
    listeners = bind_listeners(config.listen, config.tcp_port)
    try:
        scrapes = Scrapes(open_metrics_listeners(config), Metrics(only=FORK_METRICS))
    except ServiceError:
        for listener in listeners:
            listener.close()
        raise
    try:
        _run_with(config, listeners, scrapes)
    finally:
        for listener in listeners:
            listener.close()
        scrapes.close_all()


def _run_with(config: ServerConfig, listeners: list[socket.socket], scrapes: Scrapes) -> None:
    data_dir = Path(config.data_dir)
    with locked_data_dir(data_dir) as lock_fd:
        key = load_or_create_key(config)
        path = data_dir / LOG_FILE
        fsync = FsyncPolicy(config.fsync)
        recover_log(path, fsync)
        log = LogFile(path)
        try:
            index = open_index(log)
            logger.info("log %s: %d messages", path, index.head)
            os.fsync(log.fd)  # what an earlier run wrote may not have reached the disk yet
            durable = DurableEnd(fsync, index.end)
            signals = SignalWatch(WATCHED)  # before "listening": a SIGTERM from then on is ours
            for listener in scrapes.listeners:
                logger.info(
                    "listening metrics http://%s%s (the parent's own figures)",
                    format_address(listener.getsockname()),
                    METRICS_PATH,
                )
            for listener in listeners:
                logger.info("listening tcp %s", format_address(listener.getsockname()))
            logger.info("fork mode: a process pair per client; no HTTP or WebSocket listener")
            notify_read, notify_write = wakeup.open_wake_pipe()
            context = ForkContext(
                room_settings(config),
                key.encode(),
                path,
                fsync,
                durable,
                index,
                notify_write,
                load_accounts(config, threaded=False),
            )
            fds = SupervisorFds(lock_fd, notify_read)
            Supervisor(config, context, log, listeners, signals, fds, scrapes).serve()
            os.fsync(log.fd)
        finally:
            log.close()
        logger.info("stopped; log flushed")


def open_metrics_listeners(config: ServerConfig) -> list[socket.socket]:
    """The metrics listener's sockets when `metrics` is HOST:PORT, else none."""
    if (address := config.metrics_address) is None:
        return []
    host, port = address
    return bind_listeners([host], port)


def bind_listeners(hosts: list[str], port: int) -> list[socket.socket]:
    """Non-blocking listening sockets on `port` at each host ('*': every interface)."""
    listeners: list[socket.socket] = []
    host = ""
    try:
        for host in hosts:
            for family, kind, proto, _, address in socket.getaddrinfo(
                None if host == "*" else host,
                port,
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
    except OSError as exc:
        for listener in listeners:
            listener.close()
        raise ServiceError(listen_failure(host, port, exc)) from None
    return listeners


@dataclass(slots=True)
class ClientProcess:
    """A live connection process, as the parent tracks it."""

    label: str
    wake_fd: int


@dataclass(frozen=True, slots=True)
class SupervisorFds:
    """The parent's own descriptors that the supervisor needs (no child keeps them)."""

    lock: int  # the lock on the log (`service.locked_data_dir`, `loglock`)
    notify: int  # the notify pipe's read end (`wakeup`)


class Supervisor:
    """The parent's poll loop. `serve()` returns once every child has ended after a stop."""

    def __init__(
        self,
        config: ServerConfig,
        context: ForkContext,
        log: LogFile,
        listeners: list[socket.socket],
        signals: SignalWatch,
        fds: SupervisorFds,
        scrapes: Scrapes,
    ) -> None:
        self._config = config
        self._keepalive = tcp_keepalive(config)
        self._context = context
        self._log = log
        self._listeners = listeners
        self._notify_fd = fds.notify
        self._lock_fd = fds.lock
        self._signals = signals
        self._clients: dict[int, ClientProcess] = {}
        self._refusals = Refusals(config.papaya_auth_timeout)
        self._exhaustion = Exhaustion()
        self._pid = os.getpid()
        self._unsynced = False
        self._last_sync = time.monotonic()
        self._scrapes = scrapes
        metrics = scrapes.metrics
        metrics.open_connections.set_function(lambda: len(self._clients))
        metrics.log_messages.set_function(self._catch_up)
        metrics.watch_log_file(lambda: os.fstat(self._log.fd).st_size)

    def __repr__(self) -> str:
        return (
            f"<Supervisor clients={len(self._clients)} refusing={len(self._refusals)} "
            f"head={self._context.index.head}>"
        )

    def serve(self) -> None:
        """Accept, broadcast and reap until a stop signal; then shut down (see the module)."""
        while not self._signals.stop_requested:
            now = time.monotonic()
            pause = self._exhaustion.pause(now)
            poller = select.poll()
            watched = [self._signals.fileno(), self._notify_fd, *self._refusals.fds()]
            watched += self._scrapes.fds()
            if pause is None:
                watched += self._listening_fds()
            for fd in watched:
                poller.register(fd, select.POLLIN)
            timeouts = [pause, self._refusals.timeout(now), self._sync_timeout()]
            timeouts.append(self._scrapes.timeout(now))
            timeout = min((t for t in timeouts if t is not None), default=None)
            ready = {fd for fd, _ in poller.poll(None if timeout is None else timeout * 1000)}
            self._handle(ready)
            for fd in ready.intersection(self._refusals.fds()):
                self._refusals.answer(fd)
            self._refusals.expire(time.monotonic())
            self._scrapes.handle(ready, time.monotonic())
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
            if stop := arrived & {signal.SIGTERM, signal.SIGINT}:
                logger.info("%s received: shutting down", signal.Signals(min(stop)).name)
            if signal.SIGHUP in arrived:
                logger.info("SIGHUP: nothing to reload in fork mode")
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
                if exc.errno == errno.ECONNABORTED:
                    continue  # the client gave up while it waited in the backlog
                if exc.errno not in EXHAUSTION_ERRORS:
                    raise
                self._exhaustion.failed("accept", exc, time.monotonic())
                return
            label = "tcp " + format_address(address)
            try:
                set_tcp_keepalive(sock, self._keepalive)  # inherited by the child's copy
            except OSError:
                sock.close()  # the client is already gone
                continue
            if len(self._clients) >= self._config.max_connections:
                self._scrapes.metrics.refuse("server_full")
                self._refusals.add(sock, label, time.monotonic())
                continue
            try:
                if not self._spawn(sock, label):
                    return
            finally:
                sock.close()  # the child has its own copy

    def _spawn(self, sock: socket.socket, label: str) -> bool:
        """Fork the connection's process; False if resources ran out (the pause has begun)."""
        self._catch_up()
        try:
            wake_read, wake_write = wakeup.open_wake_pipe()
        except OSError as exc:
            if exc.errno not in EXHAUSTION_ERRORS:
                raise
            self._exhaustion.failed("pipe2", exc, time.monotonic())
            return False
        connected_at = time.monotonic()
        with forking_safely():
            try:
                pid = os.fork()
            except OSError as exc:
                close_quietly([wake_read, wake_write])
                if exc.errno not in EXHAUSTION_ERRORS:
                    raise
                self._exhaustion.failed("fork", exc, time.monotonic())
                return False
            if pid == 0:
                wake = (wake_read, wake_write)
                run_child(lambda: self._start_child(sock, label, wake, connected_at))
            with suppress(OSError):  # the child may have done it (or ended) already
                os.setpgid(pid, pid)
            self._clients[pid] = ClientProcess(label, wake_write)
        os.close(wake_read)
        self._exhaustion.spawned()
        return True

    def _catch_up(self) -> int:
        """Bring the parent's log index up to date (children inherit it); return its head."""
        with self._log.locked(fcntl.LOCK_SH):
            self._context.index.catch_up(self._log, self._context.durable.limit())
        return self._context.index.head

    def _start_child(
        self, sock: socket.socket, label: str, wake: tuple[int, int], connected_at: float
    ) -> None:
        """The connection process: let go of the parent's descriptors, then serve."""
        wake_fd, wake_write = wake
        inherited = [self._lock_fd, self._notify_fd, self._log.fd, wake_write]
        inherited += self._listening_fds() + self._scrapes.fds()
        inherited += self._refusals.fds() + [client.wake_fd for client in self._clients.values()]
        signals = become_child(self._signals, self._pid, inherited)
        os.setpgid(0, 0)
        serve_connection(
            sock, self._context, signals, label=label, wake_fd=wake_fd, connected_at=connected_at
        )

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
                self._exhaustion.relieved()

    # --- fsync = "interval" -----------------------------------------------------------------
    def _sync_timeout(self) -> float | None:
        if self._context.fsync is not FsyncPolicy.INTERVAL or not self._unsynced:
            return None
        due = self._last_sync + self._config.fsync_interval
        return max(0.0, due - time.monotonic())

    def _sync_if_due(self) -> None:
        timeout = self._sync_timeout()
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
        self._refusals.close_all()
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
