"""The servers a sweep can measure, and how to start each one.

A `ServerSpec` says how to launch one *mode*: its command line, and how the runner learns
its port. The bench's own sinks and ``papaya-trio serve`` bind port 0 and announce the port
on stderr (the spec holds the regular expression that finds it); an external server
(``--external NAME=COMMAND``) is given a free port through ``{port}`` in its command and is
ready once it accepts a connection. ``{data_dir}`` in a command is replaced by a fresh folder
for each trial (the chat profile's room: its key is already there, in ``{data_dir}/key``).

The ``paper`` profile uses the sinks; the ``chat`` profile runs the real server, in trio and
in fork mode.
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
#: How the sinks and the real server announce their port on stderr.
SINK_ANNOUNCEMENT = re.escape(ANNOUNCEMENT_PREFIX) + r"(\d+)"
SERVE_ANNOUNCEMENT = r"listening tcp 127\.0\.0\.1:(\d+)"


@dataclass(frozen=True)
class ServerSpec:
    """How to start one mode's server.

    `command` is an argv template: ``{port}`` and ``{data_dir}`` in each argument are
    replaced. `announcement`, when set, is a regular expression whose first group is the
    port, found in the server's stderr (it binds port 0 itself); otherwise the server is
    given a free port and is ready once it accepts a connection.
    """

    name: str
    command: tuple[str, ...]
    announcement: str | None

    def argv(self, port: int, data_dir: Path) -> list[str]:
        """The command line to run, for the given port and room folder."""
        return [
            part.replace("{port}", str(port)).replace("{data_dir}", str(data_dir))
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


def chat_spec(mode: str, fsync: str, max_connections: int) -> ServerSpec:
    """``papaya-trio serve`` in `mode` on loopback, with a fresh room per trial."""
    if mode not in CHAT_MODES:
        raise ValueError(f"unknown server mode {mode!r}; choose from {', '.join(CHAT_MODES)}")
    # Every generated client comes from 127.0.0.1, senders go as fast as the sweep asks and
    # receivers stay silent: trio mode's per-address caps, rate limits and idle timeout would
    # measure themselves, not the server (fork mode has none of them).
    limits_off = (
        *("--max-connections-per-ip", "0", "--max-handshakes-per-ip", "0"),
        *("--rate-messages", "0", "--rate-bytes", "0", "--idle-timeout", "0"),
    )
    return ServerSpec(
        name=mode,
        command=(
            *(sys.executable, "-m", "papaya_trio", "serve", "--mode", mode),
            *("--data-dir", "{data_dir}", "--listen", "127.0.0.1"),
            *("--tcp-port", "0", "--fsync", fsync),
            # fork mode opens no HTTP port and refuses --http-port
            *(("--http-port", "0") if mode != "fork" else ()),
            *("--max-connections", str(max_connections)),
            *(limits_off if mode == "trio" else ()),
        ),
        announcement=SERVE_ANNOUNCEMENT,
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
