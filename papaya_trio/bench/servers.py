"""The servers a sweep can measure, and how to start each one.

A `ServerSpec` says how to launch one *mode*: its command line, and how the runner learns
its port. The bench's own sinks bind port 0 and announce the port on stderr; an external
server (``--external NAME=COMMAND``) is given a free port through ``{port}`` in its command
and is ready once it accepts a connection.

The ``paper`` profile uses the sinks. A ``chat`` profile would add specs for
``papaya-trio serve`` in trio and fork mode (and a chat load generator); it is not written
yet because the core server does not exist yet.
"""

from __future__ import annotations

import shlex
import socket
import sys
from dataclasses import dataclass

#: The sink modes of the paper profile, by name.
SINK_MODES: dict[str, tuple[str, ...]] = {
    "trio": ("papaya_trio.bench.sink_trio", "--variant", "tuned"),
    "trio-naive": ("papaya_trio.bench.sink_trio", "--variant", "naive"),
    "trio-batched": ("papaya_trio.bench.sink_trio", "--variant", "batched"),
    "fork": ("papaya_trio.bench.sink_fork",),
}
DEFAULT_PAPER_MODES = ("trio", "fork")


@dataclass(frozen=True)
class ServerSpec:
    """How to start one mode's server.

    `command` is an argv template; for an announcing server it is run as is (it binds port
    0 and prints the port on stderr), otherwise ``{port}`` in each argument is replaced.
    """

    name: str
    command: tuple[str, ...]
    announces_port: bool

    def argv(self, port: int) -> list[str]:
        """The command line to run, for the given port (ignored by announcing servers)."""
        if self.announces_port:
            return list(self.command)
        return [part.replace("{port}", str(port)) for part in self.command]


def sink_spec(mode: str, recv_size: int | None = None) -> ServerSpec:
    """The spec of one of the bench's sink servers."""
    if mode not in SINK_MODES:
        raise ValueError(f"unknown sink mode {mode!r}; choose from {', '.join(SINK_MODES)}")
    extra = ("--recv-size", str(recv_size)) if recv_size else ()
    return ServerSpec(
        name=mode,
        command=(sys.executable, "-m", *SINK_MODES[mode], "--port", "0", *extra),
        announces_port=True,
    )


def external_spec(definition: str) -> ServerSpec:
    """Parse ``NAME=COMMAND``; COMMAND must contain ``{port}``."""
    name, sep, command = definition.partition("=")
    name = name.strip()
    if not sep or not name or not command.strip():
        raise ValueError(f"--external wants NAME=COMMAND, got {definition!r}")
    if "{port}" not in command:
        raise ValueError(f"the command of {name!r} must contain {{port}}")
    return ServerSpec(name=name, command=tuple(shlex.split(command)), announces_port=False)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, for servers that cannot bind port 0 themselves."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port
