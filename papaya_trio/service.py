"""The server as a real program: data folder, key, log store, TCP listeners, signals.

Everything here touches the real world (files, sockets, wall clock, signals); the server
underneath (`ChatServer`, `Room`, `ChatLog`) does not, so tests and the simulation run it
without this module.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import signal
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path

import trio

from papaya_trio.accounts import AccountError, Accounts, users_path
from papaya_trio.admission import AdmissionSettings
from papaya_trio.chatlog import ChatLog, FsyncPolicy, Retention
from papaya_trio.config import ServerConfig, public_addresses
from papaya_trio.keepalive import TcpKeepalive
from papaya_trio.keys import generate_key, key_is_private, read_key, write_key
from papaya_trio.loglock import LogInUse, held_log
from papaya_trio.logmaint import write_quarantine
from papaya_trio.logstore import LogStore
from papaya_trio.metrics import METRICS_PATH, Metrics
from papaya_trio.redislog import RedisStoreError, open_redis_log
from papaya_trio.room import Room, RoomSettings
from papaya_trio.segments import SegmentedFileStorage, sealed_segments
from papaya_trio.server import ChatServer, format_address
from papaya_trio.storage import FileStorage
from papaya_trio.tls import TlsError, reload_context, server_context
from papaya_trio.transports.http import WebSettings
from papaya_trio.transports.static import StaticSite, StaticSiteError
from papaya_trio.transports.websocket import WebSocketSettings

logger = logging.getLogger(__name__)

LOG_FILE = "chat.log"
SPARE_FILES = 64  # descriptors beyond the connections: log, lock, listeners, libraries


class ServiceError(Exception):
    """The server cannot start; the message says why."""


def wall_clock_ms() -> int:
    """Milliseconds since the epoch, for record timestamps."""
    return time.time_ns() // 1_000_000


def make_data_dir(data_dir: Path) -> None:
    """Create the data folder (owner-only) if it does not exist; ServiceError naming it if it
    cannot be used."""
    with data_dir_errors(data_dir):
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not os.access(data_dir, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable", str(data_dir))


@contextmanager
def data_dir_errors(data_dir: Path) -> Iterator[None]:
    """Turn an OSError on the data folder into a one-line ServiceError naming the folder."""
    try:
        yield
    except (FileExistsError, NotADirectoryError):
        raise ServiceError(
            f"data folder {data_dir} cannot be used: it or a folder above it is a file"
        ) from None
    except PermissionError:
        raise ServiceError(
            f"data folder {data_dir} is not writable by this user (uid {os.getuid()}):"
            " give it to this user or choose another data_dir"
        ) from None
    except OSError as exc:
        raise ServiceError(f"data folder {data_dir} cannot be used: {exc.strerror}") from None


@contextmanager
def locked_data_dir(data_dir: Path) -> Iterator[int]:
    """Create the data folder and hold the exclusive lock on its log: one server per log.

    Yields the lock's descriptor (see `loglock`: the lock is on ``chat.log`` itself, so no file
    can be deleted to get around it). It belongs to the open file description, which a forked
    child shares: fork mode closes this descriptor in every child, so only the server itself
    holds the log. A folder that cannot be used is a ServiceError naming it.
    """
    make_data_dir(data_dir)
    with ExitStack() as held:
        with data_dir_errors(data_dir):
            try:
                fd = held.enter_context(held_log(data_dir / LOG_FILE))
            except LogInUse as exc:
                raise ServiceError(str(exc)) from None
        yield fd


def raise_open_file_limit(needed: int) -> None:
    """Raise the soft limit on open files to `needed` (at most the hard limit), so that the
    configured connections fit; warn when they do not. A server at the limit can accept
    nobody, legitimate clients included, which is what a flood wants."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        logger.warning(
            "open file limit %d is below the %d that max_connections + max_handshakes need",
            target,
            needed,
        )


def load_or_create_key(config: ServerConfig) -> str:
    """The room's key, and a log line saying where it is (never the key itself).

    Only the default key file (DATA_DIR/key) is created when missing: a `key_file` that does
    not exist is an error, because quietly generating one would lock everybody out over a typo.
    """
    path = config.key_path
    if not config.key_file and not path.exists():
        write_key(path, generate_key())
        logger.warning("generated a new key in %s (give it to your users)", path)
    key = read_key(path)
    if not key_is_private(path):
        logger.warning("key file %s is readable by other users: chmod 600 it", path)
    logger.info("room key: %s", path)
    return key


def room_settings(config: ServerConfig) -> RoomSettings:
    """The per-room part of the configuration."""
    return RoomSettings(
        history=config.history,
        max_message_bytes=config.max_message_bytes,
        max_line_bytes=config.max_line_bytes,
        max_lag=config.max_lag,
        auth_timeout=config.auth_timeout,
        papaya_auth_timeout=config.papaya_auth_timeout,
        idle_timeout=config.idle_timeout,
        rate_messages=config.rate_messages,
        rate_burst=config.rate_burst,
        rate_bytes=config.rate_bytes,
        rate_burst_bytes=config.rate_burst_bytes,
        auth=config.auth,
    )


def admission_settings(config: ServerConfig) -> AdmissionSettings:
    """The connection limits of the configuration."""
    return AdmissionSettings(
        max_connections=config.max_connections,
        max_handshakes=config.max_handshakes,
        max_connections_per_ip=config.max_connections_per_ip,
        max_handshakes_per_ip=config.max_handshakes_per_ip,
        pressure_auth_timeout=config.pressure_auth_timeout,
        wrong_key_rate=config.wrong_key_rate,
        wrong_key_burst=config.wrong_key_burst,
        log_interval=config.auth_log_interval,
    )


def tcp_keepalive(config: ServerConfig) -> TcpKeepalive:
    """The keepalive timings of the configuration."""
    return TcpKeepalive(
        config.tcp_keepalive_idle, config.tcp_keepalive_interval, config.tcp_keepalive_count
    )


def load_accounts(config: ServerConfig, *, threaded: bool = True) -> Accounts | None:
    """The accounts, unless `auth` is "key" (then tokens are not consulted)."""
    if config.auth == "key":
        return None
    path = users_path(Path(config.data_dir))
    try:
        accounts = Accounts(path, threaded=threaded)
    except AccountError as exc:
        raise ServiceError(str(exc)) from None
    if not path.exists():
        logger.warning(
            "auth = %s but %s does not exist yet: add users with `papaya-trio user add`",
            config.auth,
            path,
        )
    return accounts


def web_settings(config: ServerConfig, metrics: Metrics | None = None) -> WebSettings:
    """The HTTP port's part of the configuration, with the browser client's files read in
    (and `metrics` served at /metrics if given)."""
    try:
        site = StaticSite.browser_client(config.max_message_bytes)
    except StaticSiteError as exc:
        raise ServiceError(str(exc)) from None
    websocket = WebSocketSettings(
        max_message_bytes=config.ws_max_message_bytes,
        handshake_timeout=config.ws_handshake_timeout,
        ping_interval=config.ws_ping_interval,
        ping_timeout=config.ws_ping_timeout,
        allowed_origins=frozenset(config.allowed_origins),
        scheme="https" if config.tls else "http",
    )
    return WebSettings(site, websocket, metrics)


async def open_tcp_listeners(
    config: ServerConfig, port: int | None = None
) -> list[trio.SocketListener]:
    """Listen on `port` (default: tcp_port) at every configured address ('*': all interfaces,
    IPv4 and IPv6), with SO_REUSEPORT if `reuse_port` is set."""
    port = config.tcp_port if port is None else port
    listeners: list[trio.SocketListener] = []
    try:
        for host in config.listen:
            address = None if host == "*" else host
            try:
                if config.reuse_port:
                    listeners += await _open_shared_listeners(port, address)
                else:
                    listeners += await trio.open_tcp_listeners(port, host=address)
            except OSError as exc:
                raise ServiceError(listen_failure(host, port, exc)) from None
    except BaseException:
        for listener in listeners:
            await listener.aclose()
        raise
    return listeners


def listen_failure(host: str, port: int, exc: OSError) -> str:
    """The one-line reason a listener could not be opened, naming the address and the port."""
    where = f"cannot listen on {'every interface' if host == '*' else host} port {port}"
    if isinstance(exc, socket.gaierror):
        return f"{where}: {host!r} does not resolve to an address of this machine ({exc.strerror})"
    if exc.errno == errno.EADDRINUSE:
        return f"{where}: the port is in use (another server?)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{where}: no interface of this machine has that address"
    if exc.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need privileges)"
    return f"{where}: {exc.strerror or exc}"


def browser_url(scheme: str, address: object) -> str:
    """The URL to open for a listener, with a note when it listens on every interface.

    A wildcard address (0.0.0.0, ::) is not one a browser can open: the URL names loopback
    instead, and the note says that other machines use this host's name.
    """
    if isinstance(address, tuple) and address[0] in ("0.0.0.0", "::"):
        local = "127.0.0.1" if address[0] == "0.0.0.0" else "[::1]"
        port = address[1]
        return (
            f"{scheme}://{local}:{port}/ (every interface: from another machine,"
            f" {scheme}://{socket.gethostname()}:{port}/ or this host's address)"
        )
    return f"{scheme}://{format_address(address)}/"


async def open_metrics_listeners(config: ServerConfig) -> list[trio.SocketListener]:
    """The metrics listener's sockets when `metrics` is HOST:PORT, else none."""
    if (address := config.metrics_address) is None:
        return []
    host, port = address
    try:
        return await trio.open_tcp_listeners(port, host=None if host == "*" else host)
    except OSError as exc:
        raise ServiceError(f"cannot listen for metrics on {config.metrics}: {exc}") from None


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The TLS context of both ports, or None without TLS; raises TlsError for bad files."""
    if not config.tls:
        return None
    return server_context(Path(config.tls_cert), Path(config.tls_key))


async def _open_shared_listeners(port: int, host: str | None) -> list[trio.SocketListener]:
    """Like trio.open_tcp_listeners, plus SO_REUSEPORT: every server of the room binds the
    same port and the kernel spreads new connections over them."""
    listeners: list[trio.SocketListener] = []
    addresses = await trio.socket.getaddrinfo(
        host, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE
    )
    try:
        for family, kind, proto, _, address in addresses:
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
                if family == trio.socket.AF_INET6:
                    sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
                await sock.bind(address)
                sock.listen()
            except OSError:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except OSError:
        for listener in listeners:
            await listener.aclose()
        raise
    return listeners


@asynccontextmanager
async def open_log_store(
    config: ServerConfig, metrics: Metrics | None = None
) -> AsyncIterator[LogStore]:
    """The configured log store, open; flushed and released on exit.

    With `metrics`, the file store's fsyncs are timed and its size exported.

    The file store holds the data folder's lock throughout; the Redis store shares its stream
    with any number of servers, so it takes no lock (the data folder only holds the key).
    """
    data_dir = Path(config.data_dir)
    fsync = FsyncPolicy(config.fsync)
    if config.store == "redis":
        make_data_dir(data_dir)
        try:
            async with open_redis_log(
                config.redis_url,
                key=config.redis_key,
                clock_ms=wall_clock_ms,
                fsync=fsync,
                replicas=config.redis_replicas,
                command_timeout=config.redis_timeout,
            ) as redis_log:
                logger.info("log in redis stream %s: %d messages", redis_log.stream, redis_log.head)
                yield redis_log
        except RedisStoreError as exc:
            raise ServiceError(str(exc)) from None
        return
    with locked_data_dir(data_dir):
        retention = None
        storage: FileStorage | SegmentedFileStorage
        segments: SegmentedFileStorage | None = None
        if config.retention_days > 0 or config.retention_bytes > 0:  # see `segments`
            days, size = config.retention_days, config.retention_bytes
            retention = Retention(days, size, config.segment_bytes)
            storage = segments = SegmentedFileStorage(data_dir)
        elif sealed_segments(data_dir):  # retention was on: read the segments, trim nothing
            storage = segments = SegmentedFileStorage(data_dir)
        else:
            storage = FileStorage(data_dir / LOG_FILE)
        stored = storage if metrics is None else metrics.storage(storage)
        log, _ = await ChatLog.open(
            stored,
            clock_ms=wall_clock_ms,
            fsync=fsync,
            sync_interval=config.fsync_interval,
            quarantine=partial(write_quarantine, storage.path),
            retention=retention,
            segments=segments,
        )
        logger.info("log %s: messages %d..%d", storage.path, log.first, log.head)
        try:
            yield log
        finally:
            await log.aclose()


async def run_service(config: ServerConfig) -> None:
    """Run the trio-mode server until SIGTERM or SIGINT, then shut down gracefully.

    Every listener is bound before anything is written: a port in use stops the start before a
    data folder, a key or a log is created. SIGHUP re-reads the TLS certificate and key (see
    `tls`).
    """
    context = tls_context(config)
    metrics = Metrics()
    raise_open_file_limit(config.max_connections + config.max_handshakes + SPARE_FILES)
    listeners = await open_all_listeners(config)
    try:
        make_data_dir(Path(config.data_dir))
        key = load_or_create_key(config)  # before the log: a bad key file creates nothing
        async with open_log_store(config, metrics) as log:
            await _serve(config, log, key, context, metrics, listeners)
        logger.info("stopped; log flushed")
    finally:
        for listener in (listener for group in listeners for listener in group):
            await listener.aclose()


async def open_all_listeners(config: ServerConfig) -> list[list[trio.SocketListener]]:
    """The TCP, HTTP, papayaChat (maybe none) and metrics (maybe none) listeners, in that
    order; all or none."""
    ports = [config.tcp_port, config.http_port]
    opened: list[list[trio.SocketListener]] = []
    try:
        for port in ports:
            opened.append(await open_tcp_listeners(config, port))
        papaya_port = config.papaya_port
        opened.append(await open_tcp_listeners(config, papaya_port) if papaya_port >= 0 else [])
        opened.append(await open_metrics_listeners(config))
    except BaseException:
        for listener in (listener for group in opened for listener in group):
            await listener.aclose()
        raise
    return opened


async def _serve(
    config: ServerConfig,
    log: LogStore,
    key: str,
    context: ssl.SSLContext | None,
    metrics: Metrics,
    opened: list[list[trio.SocketListener]],
) -> None:
    room = Room(log, key, room_settings(config), accounts=load_accounts(config), metrics=metrics)
    server = ChatServer(
        room,
        shutdown_deadline=config.shutdown_deadline,
        web=web_settings(config, metrics if config.metrics == "http" else None),
        admission=admission_settings(config),
        keepalive=tcp_keepalive(config),
    )
    tcp, http, papaya, metrics_listeners = opened
    for listener in metrics_listeners:
        address = format_address(listener.socket.getsockname())
        logger.info("listening metrics http://%s%s", address, METRICS_PATH)
    if config.metrics == "http":
        logger.info("metrics at %s on the HTTP port", METRICS_PATH)
        if public_addresses(config):
            logger.warning(
                "metrics = http: anyone who can reach the HTTP port can read %s; "
                'prefer metrics = "127.0.0.1:PORT" (a listener of its own)',
                METRICS_PATH,
            )
    # Signals are ours before the first "listening" line: whoever waits for it and then sends
    # SIGTERM gets a graceful shutdown, never the default handler's death.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        _log_listening(tcp, http, papaya, context)
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            nursery.start_soon(_handle_signals, signals, server, config, context)
            await server.serve(
                _secured(tcp, context), _secured(http, context), papaya, metrics_listeners
            )
            nursery.cancel_scope.cancel()


def _log_listening(
    tcp: Sequence[trio.SocketListener],
    http: Sequence[trio.SocketListener],
    papaya: Sequence[trio.SocketListener],
    context: ssl.SSLContext | None,
) -> None:
    """One line per listener; the tcp lines come last, so whoever waits for "listening tcp"
    then has them all."""
    scheme, secure = ("https", " (TLS)") if context else ("http", "")
    for listener in http:
        url = browser_url(scheme, listener.socket.getsockname())
        logger.info("listening http %s (open it in a browser to chat)", url)
    for listener in papaya:
        address = format_address(listener.socket.getsockname())
        logger.info("listening papaya %s (the papayaChat dialect only, in clear)", address)
    for listener in tcp:
        logger.info("listening tcp %s%s", format_address(listener.socket.getsockname()), secure)


def _secured(
    listeners: Sequence[trio.SocketListener], context: ssl.SSLContext | None
) -> Sequence[trio.abc.Listener[trio.abc.Stream]]:
    """`listeners` wrapped in TLS when there is a context.

    `https_compatible` on both the TCP and the HTTP port: the server closes without TLS's
    close_notify (a forced close) and takes a client's close without one as an end of stream.
    That gives nothing away: every message is framed (a line, an HTTP message, a WebSocket
    frame), and a cut stream can only lose an unfinished one, never forge one.
    """
    if context is None:
        return listeners
    return [trio.SSLListener(listener, context, https_compatible=True) for listener in listeners]


async def _handle_signals(
    signals: AsyncIterator[int],
    server: ChatServer,
    config: ServerConfig,
    context: ssl.SSLContext | None,
) -> None:
    """SIGHUP re-reads the certificate and key (and is harmless without TLS, so that a
    service manager's reload never kills the server); SIGTERM or SIGINT shuts it down."""
    async for signum in signals:
        if signum == signal.SIGHUP:
            _reload_tls(context, config)
            continue
        logger.info("%s received: shutting down", signal.Signals(signum).name)
        server.shutdown()
        return


def _reload_tls(context: ssl.SSLContext | None, config: ServerConfig) -> None:
    if context is None:
        logger.info("SIGHUP: nothing to reload without TLS")
        return
    try:
        reload_context(context, Path(config.tls_cert), Path(config.tls_key))
    except TlsError as exc:
        logger.error("SIGHUP: TLS certificate not reloaded, keeping the old one: %s", exc)
    else:
        logger.info("SIGHUP: reloaded the TLS certificate from %s", config.tls_cert)
