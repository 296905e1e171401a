"""`papaya-chat`: the command line, turning flags into a configuration and a mode."""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from papaya_clients.terminal import config as client_config
from papaya_clients.terminal.exit_status import ExitStatus
from papaya_clients.terminal.plain import run_plain
from papaya_clients.terminal.transport import client_tls_context, connector_for
from papaya_clients.terminal.tui import run_tui
from papaya_trio import __version__

DESCRIPTION = """\
Chat in a papaya-trio room from the terminal: a full-screen view by default, or --plain for
pipes and scripts. Settings come from flags, then PAPAYA_* environment variables, then
$XDG_CONFIG_HOME/papaya/client.toml (~/.config/papaya/client.toml), then defaults.
"""

EPILOG = """\
exit status: 0 ok; 1 some input was not sent (refused, too long, --once timed out);
2 bad flags or configuration; 3 wrong key or user name; 4 the first connection failed
(no server there, server full); 130 interrupted. Once connected, the client reconnects by
itself with backoff and resumes without gap or duplicate.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every setting flag defaults to None (not given)."""
    parser = argparse.ArgumentParser(
        prog="papaya-chat",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"papaya-chat {__version__}")
    parser.add_argument("--host", help="server host (PAPAYA_HOST; default 127.0.0.1)")
    parser.add_argument("--port", help="server TCP port (PAPAYA_PORT; default 7722)")
    parser.add_argument("--user", help="your name in the room (PAPAYA_USER; default login)")
    parser.add_argument(
        "--key-file",
        dest="key_file",
        help="file holding the shared key (PAPAYA_KEY_FILE; default ./papaya-data/key)",
    )
    parser.add_argument(
        "--key",
        help="the key itself; avoid it: other local users can read it in the process list",
    )
    parser.add_argument(
        "--ws", metavar="URL", help="connect over WebSocket, ws:// or wss:// (PAPAYA_WS)"
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        default=None,
        help="TLS on the TCP port, the server's certificate verified (PAPAYA_TLS)",
    )
    parser.add_argument(
        "--ca-file",
        dest="ca_file",
        metavar="PEM",
        help="trust the CA certificates in this file instead of the system's, for --tls and"
        " wss:// (PAPAYA_CA_FILE); for a self-signed server, its certificate",
    )
    parser.add_argument(
        "--token-file",
        dest="token_file",
        help="file holding your personal token, from `papaya-trio user add NAME`"
        " (PAPAYA_TOKEN_FILE); proves your name",
    )
    parser.add_argument("--config", type=Path, help="TOML file instead of the default one")
    parser.add_argument(
        "--plain",
        action="store_true",
        help="no full screen: send stdin's lines, print messages as 'DATE TIME user: text'",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="send stdin's lines, wait for their confirmation and exit (implies --plain)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="with --once, give up after this long (default 30)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the client and return its exit status (see the epilog of --help)."""
    args = build_parser().parse_args(argv)
    flags = {name: getattr(args, name) for name in client_config.SETTINGS}
    try:
        settings = client_config.load(flags, config_path=args.config, key=args.key)
        tls = client_tls_context(settings.ca_file) if settings.secure else None
    except client_config.ConfigError as exc:
        print(f"papaya-chat: {exc}", file=sys.stderr)
        return ExitStatus.USAGE
    server_name, connect = connector_for(settings.host, settings.port, settings.ws_url, tls)
    # Seeded from the OS: message ids must differ between runs (the server dedupes by id).
    rng = random.Random()
    try:
        if args.plain or args.once:
            return trio.run(
                lambda: run_plain(
                    settings,
                    server_name=server_name,
                    connect=connect,
                    rng=rng,
                    once=args.once,
                    give_up_after=args.timeout,
                )
            )
        return trio.run(
            lambda: run_tui(settings, server_name=server_name, connect=connect, rng=rng)
        )
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED
