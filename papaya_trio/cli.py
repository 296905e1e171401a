"""The `papaya-trio` command: serve, keygen, cert, default-config, log (export, import, check,
repair, backup), bench."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from papaya_trio import SERVER_NAME
from papaya_trio.accounts import AccountError, add_user, list_users, remove_user
from papaya_trio.bench import command as bench_command
from papaya_trio.chatlog import LogCorrupted, StorageFailed
from papaya_trio.config import (
    ConfigError,
    add_flags,
    cleartext_warning,
    default_toml,
    load_config,
    read_toml,
)
from papaya_trio.fork.parent import run_fork_service
from papaya_trio.keys import KeyFileError, generate_key, write_key
from papaya_trio.logmaint import (
    BackupFailed,
    MaintenanceError,
    backup_log,
    check_log,
    repair_log,
)
from papaya_trio.logtransfer import TransferError, export_records, import_lines
from papaya_trio.records import record_json
from papaya_trio.selfsigned import DEFAULT_DAYS, CertificateError, write_certificate
from papaya_trio.service import LOG_FILE, ServiceError, open_log_store, run_service
from papaya_trio.tls import TlsError
from papaya_trio.workers import run_workers

MAINTENANCE = ("check", "repair", "backup")  # the file store's `log` commands
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: Under systemd the journal stamps every line itself: no second time stamp.
JOURNAL_LOG_FORMAT = "%(levelname)-7s %(name)s: %(message)s"

#: Exit statuses of `papaya-trio` (README, "Exit status").
EXIT_OK = 0
EXIT_IO = 1  # the data folder or the log failed while in use (a full or failing disk)
EXIT_CONFIG = 2  # the configuration, a file it names, a port or the data folder cannot be used


def log_format() -> str:
    """The server log's line format: without time stamps when stderr goes to the journal."""
    return JOURNAL_LOG_FORMAT if os.environ.get("JOURNAL_STREAM") else LOG_FORMAT


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand.

    Each subcommand's parser is its `command_parser` default, so that an unknown argument is
    reported with that subcommand's usage (see `parse_arguments`).
    """
    parser = argparse.ArgumentParser(prog="papaya-trio", description="self-hosted chat on trio")
    parser.add_argument("--version", action="version", version=SERVER_NAME)
    commands = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="what to do (COMMAND -h for its options)",
    )
    serve = commands.add_parser("serve", help="run the chat server")
    add_flags(serve)
    keygen = commands.add_parser(
        "keygen",
        help="write a fresh random key file",
        description="Write a fresh random 128-character key, owner-only. A missing folder for"
        " it is created (owner-only), but only the last one.",
    )
    keygen.add_argument(
        "path",
        type=Path,
        nargs="?",
        default=Path("papaya-data/key"),
        metavar="PATH",
        help="where to write the key (default: papaya-data/key, where serve looks for it)",
    )
    keygen.add_argument("--force", action="store_true", help="replace an existing key file")
    cert = commands.add_parser(
        "cert",
        help="write a self-signed TLS certificate and key (for a LAN without a CA)",
        description="Write a self-signed certificate for the given host names and IP addresses"
        " and its private key, both owner-only; existing files are never replaced. Serve with"
        " --tls-cert CERT --tls-key KEY; clients trust it with papaya-chat --ca-file CERT.",
    )
    cert.add_argument("names", nargs="+", metavar="NAME", help="host name or IP address")
    cert.add_argument(
        "--cert",
        type=Path,
        default=Path("papaya-data/tls-cert.pem"),
        help="certificate file to write (default: papaya-data/tls-cert.pem)",
    )
    cert.add_argument(
        "--key",
        type=Path,
        default=Path("papaya-data/tls-key.pem"),
        help="private key file to write (default: papaya-data/tls-key.pem)",
    )
    cert.add_argument(
        "--days", type=int, default=DEFAULT_DAYS, help=f"validity (default {DEFAULT_DAYS})"
    )
    user = commands.add_parser(
        "user",
        help="manage personal accounts (for auth = accounts or both)",
        description="Personal accounts: a registered name belongs to whoever holds its token."
        " Tokens are printed once and stored only as salted scrypt hashes in DATA_DIR/users.json."
        " A running server sees changes at the next hello.",
    )
    user.add_argument("--data-dir", type=Path, help="data folder (default: ./papaya-data)")
    user.add_argument("--config", type=Path, help="take data_dir from this TOML file")
    actions = user.add_subparsers(
        dest="user_command", required=True, metavar="ACTION", help="add, list or remove"
    )
    add = actions.add_parser("add", help="register NAME and print its new token")
    add.add_argument("name", metavar="NAME", help="the name to register")
    actions.add_parser("list", help="print the registered names")
    remove = actions.add_parser("remove", help="unregister NAME (its token stops working)")
    remove.add_argument("name", metavar="NAME", help="the name to unregister")
    commands.add_parser(
        "default-config",
        help="print the default configuration as TOML",
        description="Print every server option with its default and its meaning, as a TOML"
        " file for serve --config.",
    )
    log = commands.add_parser(
        "log",
        help="move a room's messages between stores; check, repair or back up the log file",
        description="check, repair and backup work on the file store (docs/log-format.md)."
        " Exit status: 0 done (check: the log is intact), 1 the log is damaged or could not be"
        " read or written, 2 usage or configuration (no log file, a server holds the log, the"
        " destination exists, store = redis).",
    )
    log_commands = log.add_subparsers(
        dest="log_command",
        required=True,
        metavar="ACTION",
        help="export, import, check, repair or backup",
    )
    export = log_commands.add_parser("export", help="write every message to stdout")
    add_flags(export)
    restore = log_commands.add_parser("import", help="append messages, numbers and times kept")
    restore.add_argument("file", type=Path, help="JSON lines from `log export` ('-': stdin)")
    add_flags(restore)
    check = log_commands.add_parser(
        "check", help="verify every record and the numbering (safe while serving)"
    )
    add_flags(check)
    repair = log_commands.add_parser(
        "repair", help="keep every intact record, move damaged bytes to a quarantine file"
    )
    add_flags(repair)
    backup = log_commands.add_parser(
        "backup", help="copy the log to DEST up to a record boundary, verified (while serving)"
    )
    backup.add_argument("destination", type=Path, metavar="DEST", help="a new file")
    add_flags(backup)
    bench = commands.add_parser(
        "bench", help="measure trio mode against fork mode (see docs/benchmarks.md)"
    )
    bench_command.add_arguments(bench)
    _remember_parsers(parser)
    return parser


def _remember_parsers(parser: argparse.ArgumentParser) -> None:
    """Give every (sub)command's parser itself as its `command_parser` default; the innermost
    one chosen wins."""
    parser.set_defaults(command_parser=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _remember_parsers(subparser)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; an unknown argument exits 2 with its subcommand's usage."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_arguments(argv)
    try:
        if args.command == "serve":
            config = load_config(args)
            logging.basicConfig(
                stream=sys.stderr, level=config.log_level.upper(), format=log_format()
            )
            if warning := cleartext_warning(config):
                logging.getLogger(__name__).warning("%s", warning)
            if config.log_level != "debug":
                # The Redis client narrates reconnects and script loads at info; the Redis
                # store logs each outage and recovery itself, once.
                logging.getLogger("coredis").setLevel(logging.WARNING)
            if config.mode == "fork":
                run_fork_service(config)
            elif config.workers > 1:
                return trio.run(run_workers, config, argv)
            else:
                trio.run(run_service, config)
        elif args.command == "keygen":
            write_key(args.path, generate_key(), replace=args.force)
            print(f"wrote a new key to {args.path} (owner-only permissions)")
        elif args.command == "cert":
            if args.days < 1:
                raise CertificateError("--days must be at least 1")
            write_certificate(args.cert, args.key, args.names, days=args.days)
            print(f"wrote a self-signed certificate to {args.cert} and its key to {args.key}")
        elif args.command == "user":
            _user_command(args)
        elif args.command == "default-config":
            print(default_toml())
        elif args.command == "log" and args.log_command in MAINTENANCE:
            return _maintain(args)
        elif args.command == "log":
            trio.run(_transfer, args)
        elif args.command == "bench":
            return bench_command.run(args)
    except (
        ConfigError,
        KeyFileError,
        ServiceError,
        LogCorrupted,
        TlsError,
        CertificateError,
        AccountError,
        TransferError,
        MaintenanceError,
    ) as exc:
        print(f"papaya-trio: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (StorageFailed, BackupFailed, OSError) as exc:
        # The data folder or the log cannot be used (permissions, a full or failing disk).
        logging.getLogger(__name__).debug("stopped by an I/O error", exc_info=True)
        print(f"papaya-trio: error: {exc}", file=sys.stderr)
        return EXIT_IO
    return EXIT_OK


def _user_command(args: argparse.Namespace) -> None:
    data_dir = args.data_dir
    if data_dir is None:
        configured = read_toml(args.config).get("data_dir") if args.config else None
        data_dir = Path(configured or "papaya-data")
    if args.user_command == "add":
        token = add_user(data_dir, args.name)
        print(token)
        print(
            f"added {args.name}; give them the token above (it is not stored and cannot be"
            " shown again)",
            file=sys.stderr,
        )
    elif args.user_command == "remove":
        remove_user(data_dir, args.name)
        print(f"removed {args.name}", file=sys.stderr)
    else:
        for name in list_users(data_dir):
            print(name)


async def _transfer(args: argparse.Namespace) -> None:
    """`log export` or `log import` on the store the configuration names."""
    config = load_config(args)
    async with open_log_store(config) as store:
        if args.log_command == "export":
            async for record in export_records(store):
                sys.stdout.write(record_json(record) + "\n")
            sys.stdout.flush()
        else:
            lines = sys.stdin if args.file == Path("-") else _read_lines(args.file)
            count = await import_lines(store, lines)
            print(f"imported {count} messages; the log ends at {store.head}", file=sys.stderr)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TransferError(f"cannot read {path}: {exc}") from None


def _maintain(args: argparse.Namespace) -> int:
    """`log check`, `log repair` or `log backup` on the configured data folder's log file."""
    config = load_config(args)
    if config.store != "file":
        raise MaintenanceError(
            f"log {args.log_command} works on the file store, not {config.store}"
        )
    path = Path(config.data_dir) / LOG_FILE
    if args.log_command == "check":
        survey = check_log(path)
        print("\n".join(survey.lines(str(path))))
        return 0 if survey.intact else 1
    if args.log_command == "repair":
        print("\n".join(repair_log(path).lines(str(path))))
    else:
        print("\n".join(backup_log(path, args.destination).lines()))
    return 0
