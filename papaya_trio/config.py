"""Server configuration: one table of options feeds the TOML loader, the flags and the docs.

Precedence: built-in defaults, then the TOML file given with `--config`, then flags.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from papaya_trio.chatlog import FsyncPolicy


class ConfigError(Exception):
    """The configuration breaks a rule; the message says which."""


@dataclass(frozen=True, slots=True)
class Option:
    """One configuration option."""

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    metavar: str = "HOST"


OPTIONS: tuple[Option, ...] = (
    Option(
        "mode",
        str,
        "trio",
        "trio: a task pair per client; fork: a process pair per client (papayaChat's design)",
        choices=("trio", "fork"),
    ),
    Option(
        "listen",
        list,
        ["127.0.0.1"],
        "addresses to listen on (IPv4 or IPv6); '*' means every interface, IPv4 and IPv6",
    ),
    Option("tcp_port", int, 7722, "TCP port for both dialects (0 picks a free port)", minimum=0),
    Option(
        "http_port",
        int,
        8080,
        "HTTP port for the browser client and its WebSocket (0 picks a free port)",
        minimum=0,
    ),
    Option(
        "tls_cert",
        str,
        "",
        "PEM file with the server's certificate (chain allowed); with tls_key, the TCP port"
        " speaks TLS and the HTTP port HTTPS and wss://",
    ),
    Option("tls_key", str, "", "PEM file with the private key of tls_cert"),
    Option(
        "papaya_port",
        int,
        -1,
        "port serving the papayaChat dialect alone, in clear, for its client that has no TLS"
        " (-1: none; 0 picks a free port)",
        minimum=-1,
    ),
    Option(
        "allow_plaintext",
        bool,
        False,
        "listen on addresses other than loopback although the room key, names and messages"
        " travel in clear on some port (no TLS, or a papaya_port)",
    ),
    Option(
        "data_dir",
        str,
        "./papaya-data",
        "folder for the log (with any quarantine files) and the key",
    ),
    Option("key_file", str, "", "file holding the 128-character key (default: DATA_DIR/key)"),
    Option(
        "auth",
        str,
        "key",
        "how native and WebSocket clients prove who they are: key (the room key), accounts (a"
        " personal token from `papaya-trio user add`), or both (either; a registered name needs"
        " its token); the papayaChat dialect always uses the room key",
        choices=("key", "accounts", "both"),
    ),
    Option("history", int, 50, "messages a native client gets on connect without since", minimum=0),
    Option("max_message_bytes", int, 4096, "longest message text, in UTF-8 bytes", minimum=1),
    Option(
        "max_line_bytes",
        int,
        16384,
        "longest input line, in bytes (at least 3 x max_message_bytes + 1024; unset, it grows"
        " with max_message_bytes)",
        minimum=1,
    ),
    Option(
        "max_connections", int, 1024, "members (authenticated clients) served at once", minimum=1
    ),
    Option(
        "max_handshakes",
        int,
        1024,
        "connections still authenticating at once, apart from members; when all are in use, "
        "a newcomer from an address with none evicts the oldest of the busiest address",
        minimum=1,
    ),
    Option(
        "max_connections_per_ip",
        int,
        64,
        "connections from one IPv4 address or IPv6 /64 at once (0: no cap; behind a reverse "
        "proxy every client has the proxy's address)",
        minimum=0,
    ),
    Option(
        "max_handshakes_per_ip",
        int,
        8,
        "connections still authenticating from one IPv4 address or IPv6 /64 (0: no cap)",
        minimum=0,
    ),
    Option(
        "pressure_auth_timeout",
        float,
        2.0,
        "seconds a connection has to authenticate while half of max_handshakes are in use",
        minimum=0.001,
    ),
    Option(
        "wrong_key_rate",
        float,
        1.0,
        "wrong keys per second one address may present on average; past the burst its "
        "connections are closed at once",
        minimum=0.001,
    ),
    Option("wrong_key_burst", int, 10, "wrong keys one address may present at once", minimum=1),
    Option(
        "auth_log_interval",
        float,
        10.0,
        "seconds summed up in one log line about failed or refused connections",
        minimum=0.001,
    ),
    Option(
        "tcp_keepalive_idle",
        int,
        60,
        "seconds a TCP connection may be quiet before the kernel probes it",
        minimum=1,
    ),
    Option("tcp_keepalive_interval", int, 10, "seconds between keepalive probes", minimum=1),
    Option(
        "tcp_keepalive_count",
        int,
        5,
        "unanswered keepalive probes after which the connection is dropped",
        minimum=1,
    ),
    Option(
        "idle_timeout",
        float,
        300.0,
        "seconds a native client (TCP or WebSocket) may send nothing, not even a ping, before "
        "it is dropped (0: no limit)",
        minimum=0.0,
    ),
    Option(
        "rate_messages",
        float,
        10.0,
        "messages per second a member may send on average; past the burst its input is read "
        "more slowly (0: no limit)",
        minimum=0.0,
    ),
    Option("rate_burst", int, 50, "messages a member may send at once", minimum=1),
    Option(
        "rate_bytes",
        float,
        16384.0,
        "bytes of message text per second a member may send on average (0: no limit)",
        minimum=0.0,
    ),
    Option(
        "rate_burst_bytes",
        int,
        262144,
        "bytes of message text a member may send at once (at least max_message_bytes)",
        minimum=1,
    ),
    Option(
        "max_lag",
        int,
        1000,
        "live messages a client may fall behind before it is dropped",
        minimum=1,
    ),
    Option("auth_timeout", float, 10.0, "seconds a native client has to say hello", minimum=0.001),
    Option(
        "papaya_auth_timeout",
        float,
        1.0,
        "seconds a papayaChat client has for its key",
        minimum=0.001,
    ),
    Option(
        "ws_max_message_bytes",
        int,
        16384,
        "longest WebSocket message, in bytes (at least 3 x max_message_bytes + 1024; unset, it"
        " grows with max_message_bytes)",
        minimum=1,
    ),
    Option(
        "ws_handshake_timeout",
        float,
        10.0,
        "seconds a browser has to send its HTTP request and finish the WebSocket handshake",
        minimum=0.001,
    ),
    Option("ws_ping_interval", float, 30.0, "seconds between WebSocket pings", minimum=0.001),
    Option(
        "ws_ping_timeout",
        float,
        20.0,
        "seconds a WebSocket client has to answer a ping before it is dropped",
        minimum=0.001,
    ),
    Option(
        "allowed_origins",
        list,
        [],
        "origins allowed to open a WebSocket, e.g. https://chat.example.org; '*' allows any"
        " (empty: the page's own origin only)",
        metavar="ORIGIN",
    ),
    Option(
        "metrics",
        str,
        "off",
        "Prometheus metrics at /metrics: off; http (on the HTTP port, to anyone who can reach"
        " it); or HOST:PORT, a plain-HTTP listener of its own, e.g. 127.0.0.1:9772",
    ),
    Option(
        "fsync",
        str,
        "always",
        "when to force the log to disk",
        choices=tuple(policy.value for policy in FsyncPolicy),
    ),
    Option(
        "fsync_interval", float, 1.0, "seconds between syncs with fsync = interval", minimum=0.001
    ),
    Option(
        "retention_days",
        float,
        0.0,
        "drop log segments whose newest message is older than this many days (0: keep all;"
        " trio mode, file store)",
        minimum=0,
    ),
    Option(
        "retention_bytes",
        int,
        0,
        "drop the oldest log segments while the log is bigger than this (0: no bound)",
        minimum=0,
    ),
    Option(
        "segment_bytes",
        int,
        16 * 1024 * 1024,
        "with retention: start a new log segment once the current one is this big",
        minimum=4096,
    ),
    Option(
        "store",
        str,
        "file",
        "where the log lives: file (DATA_DIR/chat.log) or redis (a stream several servers share)",
        choices=("file", "redis"),
    ),
    Option(
        "redis_url",
        str,
        "redis://127.0.0.1:6379/0",
        "the Redis for store = redis: redis://, rediss:// (TLS) or unix:///path/to/socket",
    ),
    Option(
        "redis_key",
        str,
        "papaya",
        "prefix of the room's Redis keys (KEY:log, KEY:ids, KEY:resends)",
    ),
    Option(
        "workers",
        int,
        1,
        "with store = redis: run this many servers of the room, sharing the ports (reuse_port)",
        minimum=1,
    ),
    Option(
        "reuse_port",
        bool,
        False,
        "with store = redis: listen with SO_REUSEPORT, so several servers share the ports",
    ),
    Option(
        "redis_replicas",
        int,
        0,
        "with fsync = always, replicas that must have a message before it is acknowledged",
        minimum=0,
    ),
    Option(
        "redis_timeout",
        float,
        5.0,
        "seconds a Redis command may take before it counts as failed",
        minimum=0.01,
    ),
    Option(
        "shutdown_deadline", float, 5.0, "seconds clients get to leave on shutdown", minimum=0.0
    ),
    Option(
        "log_level",
        str,
        "info",
        "server log verbosity",
        choices=("debug", "info", "warning", "error"),
    ),
)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The effective configuration of one server run."""

    mode: str
    listen: list[str]
    tcp_port: int
    http_port: int
    tls_cert: str
    tls_key: str
    papaya_port: int
    allow_plaintext: bool
    data_dir: str
    key_file: str
    auth: str
    history: int
    max_message_bytes: int
    max_line_bytes: int
    max_connections: int
    max_handshakes: int
    max_connections_per_ip: int
    max_handshakes_per_ip: int
    pressure_auth_timeout: float
    wrong_key_rate: float
    wrong_key_burst: int
    auth_log_interval: float
    tcp_keepalive_idle: int
    tcp_keepalive_interval: int
    tcp_keepalive_count: int
    idle_timeout: float
    rate_messages: float
    rate_burst: int
    rate_bytes: float
    rate_burst_bytes: int
    max_lag: int
    auth_timeout: float
    papaya_auth_timeout: float
    ws_max_message_bytes: int
    ws_handshake_timeout: float
    ws_ping_interval: float
    ws_ping_timeout: float
    allowed_origins: list[str]
    metrics: str
    fsync: str
    fsync_interval: float
    retention_days: float
    retention_bytes: int
    segment_bytes: int
    store: str
    redis_url: str
    redis_key: str
    workers: int
    reuse_port: bool
    redis_replicas: int
    redis_timeout: float
    shutdown_deadline: float
    log_level: str

    @property
    def key_path(self) -> Path:
        """Where the key lives."""
        return Path(self.key_file) if self.key_file else Path(self.data_dir) / "key"

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) of the metrics listener, or None (metrics off or on the HTTP port)."""
        return None if self.metrics in METRICS_MODES else parse_host_port(self.metrics)

    @property
    def tls(self) -> bool:
        """Whether the TCP and HTTP ports speak TLS."""
        return bool(self.tls_cert)


assert [o.name for o in OPTIONS] == [f.name for f in fields(ServerConfig)]


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add `--config` and one flag per option (`--tcp-port`, `--listen` repeatable, ...)."""
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    for option in OPTIONS:
        flag = "--" + option.name.replace("_", "-")
        if option.kind is list:
            parser.add_argument(flag, action="append", metavar=option.metavar, help=option.help)
        elif option.kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=option.help)
        else:
            parser.add_argument(
                flag,
                type=option.kind,
                choices=option.choices or None,
                help=f"{option.help} (default: {option.default})"
                if option.default
                else option.help,
            )


def load_config(args: argparse.Namespace) -> ServerConfig:
    """Merge defaults, the TOML file and the flags; raise ConfigError on any broken rule.

    Limits derived from max_message_bytes (max_line_bytes, ws_max_message_bytes) that were set
    nowhere grow with it, so that raising max_message_bytes alone just works.
    """
    values: dict[str, Any] = {o.name: o.default for o in OPTIONS}
    given: set[str] = set()
    if args.config is not None:
        from_file = read_toml(args.config)
        values.update(from_file)
        given.update(from_file)
    for option in OPTIONS:
        flag_value = getattr(args, option.name, None)
        if flag_value is not None:
            values[option.name] = flag_value
            given.add(option.name)
    for name in derived_limits(values["mode"]):
        if name not in given:
            values[name] = max(values[name], room_for_a_message(values["max_message_bytes"]))
    config = ServerConfig(**values)
    check(config)
    return config


def derived_limits(mode: str) -> tuple[str, ...]:
    """The limits that must hold a whole message of max_message_bytes, JSON-escaped, with its
    envelope: a line, and a WebSocket frame (fork mode has no WebSocket)."""
    return ("max_line_bytes",) if mode == "fork" else ("max_line_bytes", "ws_max_message_bytes")


def room_for_a_message(max_message_bytes: int) -> int:
    """The least line or frame that holds a message of `max_message_bytes`, JSON-escaped."""
    return 3 * max_message_bytes + 1024


def read_toml(path: Path) -> dict[str, Any]:
    """The options set in a TOML file, type-checked."""
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    known = {o.name: o for o in OPTIONS}
    values: dict[str, Any] = {}
    for name, value in raw.items():
        option = known.get(name)
        if option is None:
            raise ConfigError(f"{path}: unknown option {name!r}")
        values[name] = _typed(path, option, value)
    return values


#: How a configuration error names each kind of value.
KIND_NAMES = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    list: "a list of strings",
}


def _typed(path: Path, option: Option, value: Any) -> Any:
    if option.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if option.kind is list:
        ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
    else:
        ok = type(value) is option.kind
    if not ok:
        shown = _toml_value(value) if isinstance(value, str | bool | int | float) else repr(value)
        raise ConfigError(
            f"{path}: {option.name} must be {KIND_NAMES[option.kind]}, not {shown[:80]}"
        )
    return value


def check(config: ServerConfig) -> None:
    """Raise ConfigError if any value is out of range."""
    for option in OPTIONS:
        value = getattr(config, option.name)
        if option.minimum is not None and value < option.minimum:
            raise ConfigError(f"{option.name} must be at least {option.minimum}, not {value}")
        if option.choices and value not in option.choices:
            choices = ", ".join(option.choices)
            raise ConfigError(f"{option.name} must be one of {choices}, not {value!r}")
    if not config.listen:
        raise ConfigError("listen needs at least one address")
    ports: dict[int, str] = {}
    for name in ("tcp_port", "http_port", "papaya_port"):
        port = getattr(config, name)
        if port > 65535:
            raise ConfigError(f"{name} must be at most 65535, not {port}")
        # Fork mode listens on tcp_port alone. With reuse_port two listeners on one port would
        # both bind, and the kernel would hand each the other's clients.
        if config.mode != "fork" and port > 0 and port in ports:
            raise ConfigError(f"{ports[port]} and {name} are both {port}: give each its own")
        ports[port] = name
    retention = config.retention_days > 0 or config.retention_bytes > 0
    if retention and (config.mode == "fork" or config.store != "file"):
        raise ConfigError(
            "retention_days and retention_bytes work in trio mode with the file store only"
            f" (this is mode {config.mode}, store {config.store})"
        )
    for host in config.listen:
        if problem := listen_address_problem(host):
            raise ConfigError(problem)
    least = room_for_a_message(config.max_message_bytes)
    for name in derived_limits(config.mode):
        if getattr(config, name) < least:
            raise ConfigError(
                f"{name} = {getattr(config, name)} is too small for max_message_bytes ="
                f" {config.max_message_bytes}: it must be at least 3 x max_message_bytes + 1024"
                f" = {least} (raise {name}, or lower max_message_bytes)"
            )
    if config.store == "redis":
        if config.mode == "fork":
            raise ConfigError('fork mode keeps its log in a file: it cannot use store = "redis"')
        if not config.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("redis_url must start with redis://, rediss:// or unix://")
        if config.workers > 1 and 0 in (config.tcp_port, config.http_port):
            raise ConfigError("workers share their ports: tcp_port and http_port cannot be 0")
    elif config.reuse_port or config.workers > 1:
        raise ConfigError('workers and reuse_port share one room: they need store = "redis"')
    if config.rate_burst_bytes < config.max_message_bytes:
        raise ConfigError("rate_burst_bytes must be at least max_message_bytes")
    if config.metrics not in METRICS_MODES:
        parse_host_port(config.metrics)
    if config.mode == "fork" and config.metrics == "http":
        raise ConfigError('fork mode has no HTTP port: give metrics = "HOST:PORT" instead')
    if config.workers > 1 and config.metrics != "off":
        raise ConfigError(
            "metrics count one server: with workers, run each server with --reuse-port and"
            " a metrics HOST:PORT of its own instead"
        )
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ConfigError("tls_cert and tls_key go together: give both or neither")
    exposed = public_addresses(config)
    clear = cleartext_ports(config)
    if exposed and clear and not config.allow_plaintext:
        raise ConfigError(
            f"refusing to listen on {', '.join(exposed)} with {' and '.join(clear)} in clear:"
            f" {CLEARTEXT} would cross the network readable by anyone on the way; give"
            " tls_cert and tls_key (see `papaya-trio cert`), or set allow_plaintext = true"
        )


METRICS_MODES = ("off", "http")


def parse_host_port(value: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:9772` for IPv6, `*:9772` for every interface) as (host, port)."""
    host, colon, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"metrics must be off, http or HOST:PORT, not {value!r}")
    return host, int(port)


#: What a plaintext port gives away to anyone who can watch the network.
CLEARTEXT = "the room key, user names and messages"


def listen_address_problem(host: str) -> str | None:
    """Why `host` cannot be a `listen` address, or None: '*', an IP address or a host name."""
    if host == "*":
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return None
    labels = host.rstrip(".").split(".")
    if all(label.isdigit() for label in labels) or ":" in host:
        return f"listen address {host!r} is not a valid IPv4 or IPv6 address"
    if not all(HOST_LABEL.fullmatch(label) for label in labels) or len(host) > 253:
        return f"listen address {host!r} is neither an IP address, '*' nor a host name"
    return None


HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def is_loopback(host: str) -> bool:
    """Whether a `listen` address is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # '*' or a host name: assume the network can reach it
        return False


def public_addresses(config: ServerConfig) -> list[str]:
    """The `listen` addresses that other machines can reach."""
    return [host for host in config.listen if not is_loopback(host)]


def cleartext_ports(config: ServerConfig) -> list[str]:
    """The ports that carry the room key, names and messages in clear."""
    ports = []
    if not config.tls:
        ports.append(f"the TCP port {config.tcp_port}")
        if config.mode != "fork":  # fork mode opens no HTTP port
            ports.append(f"the HTTP port {config.http_port} (ws://)")
    if config.papaya_port >= 0:
        ports.append(f"papaya_port {config.papaya_port}")
    return ports


def cleartext_warning(config: ServerConfig) -> str | None:
    """The warning to log when allow_plaintext lets plaintext ports face the network."""
    exposed = public_addresses(config)
    clear = cleartext_ports(config)
    if not (exposed and clear):
        return None
    return (
        f"allow_plaintext: {CLEARTEXT} travel in clear on {' and '.join(clear)}"
        f" at {', '.join(exposed)}: anyone who can watch the network can read them and join"
        " the room"
    )


def default_toml() -> str:
    """The documented default configuration, as TOML."""
    lines = ["# papaya-trio server configuration (every option shown with its default)", ""]
    for option in OPTIONS:
        lines.append(f"# {option.help}")
        if option.choices:
            lines.append(f"# one of: {', '.join(option.choices)}")
        lines.append(f"{option.name} = {_toml_value(option.default)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return repr(value)
