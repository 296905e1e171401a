"""The servers a sweep can measure, and how to start each one.

A `ServerSpec` says how to launch one *mode*: its command line, and how the runner learns
its port. The bench's own sinks and ``papaya-trio serve`` bind port 0 and announce the port
on stderr (the spec holds the regular expression that finds it); an external server
(``--external NAME=COMMAND``) is given a free port through ``{port}`` in its command and is
ready once it accepts a connection. ``{data_dir}`` in a command is replaced by a fresh folder
for each trial (the chat profile's room: its key is already there, in ``{data_dir}/key``).

The ``paper`` profile uses the sinks; the ``chat`` profile runs the real server, in trio and
in fork mode, on the file store, or in trio mode on the Redis store as one or several
*nodes* (server processes) sharing one Redis that the trial starts (``{redis_url}`` in the
command). Modes are named after what runs: ``trio`` and ``fork`` (one process, file store),
``trio-redis`` (one node, Redis store), ``trio-redis-x2`` (two nodes).
"""

from __future__ import annotations

import re
import shlex
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from papaya_trio.bench.sink_common import ANNOUNCEMENT_PREFIX

#: The sink modes of the paper profile, by name.
SINK_MODES: dict[str, tuple[str, ...]] = {
    "trio": ("papaya_trio.bench.sink_trio", "--variant", "tuned"),
    "trio-naive": ("papaya_trio.bench.sink_trio", "--variant", "naive"),
    "trio-batched": ("papaya_trio.bench.sink_trio", "--variant", "batched"),
    "fork": ("papaya_trio.bench.sink_fork",),
}
DEFAULT_PAPER_MODES = ("trio", "trio-batched", "fork")
#: The real server's modes (``papaya-trio serve --mode``), for the chat profile.
CHAT_MODES = ("trio", "fork")
STORES = ("file", "redis")
#: Redis's appendfsync for each of the server's fsync policies.
REDIS_APPENDFSYNC = {"always": "always", "interval": "everysec", "never": "no"}
#: How the sinks and the real server announce their port on stderr.
SINK_ANNOUNCEMENT = re.escape(ANNOUNCEMENT_PREFIX) + r"(\d+)"
SERVE_ANNOUNCEMENT = r"listening tcp 127\.0\.0\.1:(\d+)"


@dataclass(frozen=True)
class ServerSpec:
    """How to start one mode's server.

    `command` is an argv template: ``{port}``, ``{data_dir}`` and ``{redis_url}`` in each
    argument are replaced. `announcement`, when set, is a regular expression whose first
    group is the port, found in the server's stderr (it binds port 0 itself); otherwise the
    server is given a free port and is ready once it accepts a connection. `nodes` copies
    of the command run at once; `redis_appendfsync`, when set, starts a Redis for them
    first, with that ``appendfsync``.
    """

    name: str
    command: tuple[str, ...]
    announcement: str | None
    nodes: int = 1
    redis_appendfsync: str | None = None

    def argv(self, port: int, data_dir: Path, redis_url: str | None = None) -> list[str]:
        """The command line to run, for the given port, room folder and Redis."""
        return [
            part.replace("{port}", str(port))
            .replace("{data_dir}", str(data_dir))
            .replace("{redis_url}", redis_url or "")
            for part in self.command
        ]


def sink_spec(mode: str, recv_size: int | None = None) -> ServerSpec:
    """The spec of one of the bench's sink servers."""
    if mode not in SINK_MODES:
        raise ValueError(f"unknown sink mode {mode!r}; choose from {', '.join(SINK_MODES)}")
    extra = ("--recv-size", str(recv_size)) if recv_size else ()
    return ServerSpec(
        name=mode,
        command=(sys.executable, "-m", *SINK_MODES[mode], "--port", "0", *extra),
        announcement=SINK_ANNOUNCEMENT,
    )


def chat_name(mode: str, store: str, nodes: int) -> str:
    """The name of a chat server setup: ``trio``, ``trio-redis``, ``trio-redis-x2``..."""
    name = mode if store == "file" else f"{mode}-{store}"
    return name if nodes == 1 else f"{name}-x{nodes}"


def chat_spec(
    mode: str, fsync: str, max_connections: int, store: str = "file", nodes: int = 1
) -> ServerSpec:
    """``papaya-trio serve`` in `mode` on loopback, with a fresh room per trial; on the Redis
    store, `nodes` processes share the trial's Redis (each with ports of its own)."""
    if mode not in CHAT_MODES:
        raise ValueError(f"unknown server mode {mode!r}; choose from {', '.join(CHAT_MODES)}")
    if store not in STORES:
        raise ValueError(f"unknown store {store!r}; choose from {', '.join(STORES)}")
    if store == "redis" and mode != "trio":
        raise ValueError(f"{mode} mode keeps its log in a file: the Redis store needs trio mode")
    if nodes < 1 or (nodes > 1 and store != "redis"):
        raise ValueError("several nodes share a room through Redis: they need --store redis")
    on_redis = ("--store", "redis", "--redis-url", "{redis_url}") if store == "redis" else ()
    # Every generated client comes from 127.0.0.1, senders go as fast as the sweep asks and
    # receivers stay silent: trio mode's per-address caps, rate limits and idle timeout would
    # measure themselves, not the server (fork mode has none of them).
    limits_off = (
        *("--max-connections-per-ip", "0", "--max-handshakes-per-ip", "0"),
        *("--rate-messages", "0", "--rate-bytes", "0", "--idle-timeout", "0"),
    )
    return ServerSpec(
        name=chat_name(mode, store, nodes),
        command=(
            *(sys.executable, "-m", "papaya_trio", "serve", "--mode", mode),
            *("--data-dir", "{data_dir}", "--listen", "127.0.0.1"),
            *("--tcp-port", "0", "--fsync", fsync),
            # fork mode opens no HTTP port and refuses --http-port
            *(("--http-port", "0") if mode != "fork" else ()),
            *("--max-connections", str(max_connections)),
            *(limits_off if mode == "trio" else ()),
            *on_redis,
        ),
        announcement=SERVE_ANNOUNCEMENT,
        nodes=nodes,
        redis_appendfsync=REDIS_APPENDFSYNC[fsync] if store == "redis" else None,
    )


def external_spec(definition: str) -> ServerSpec:
    """Parse ``NAME=COMMAND``; COMMAND must contain ``{port}``."""
    name, sep, command = definition.partition("=")
    name = name.strip()
    if not sep or not name or not command.strip():
        raise ValueError(f"--external wants NAME=COMMAND, got {definition!r}")
    if "{port}" not in command:
        raise ValueError(f"the command of {name!r} must contain {{port}}")
    return ServerSpec(name=name, command=tuple(shlex.split(command)), announcement=None)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, for servers that cannot bind port 0 themselves."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port
