"""The exit statuses of `papaya-chat`, shared by the full-screen and the plain client, and
what both say on stderr when the session cannot go on."""

from __future__ import annotations

from enum import IntEnum

from papaya_clients.terminal.formatting import printable
from papaya_clients.terminal.session import SessionFailed, SessionRefused


class ExitStatus(IntEnum):
    """Why `papaya-chat` ended."""

    OK = 0
    #: Some input was not sent: refused by the server, too long, or `--once` timed out.
    NOT_SENT = 1
    #: Bad flags or configuration (argparse uses 2 too).
    USAGE = 2
    #: The server refused the key or the user name.
    REFUSED = 3
    #: The first connection failed: no server, wrong address, server full.
    UNREACHABLE = 4
    INTERRUPTED = 130


def failure_exit(failure: SessionFailed, server_name: str) -> tuple[ExitStatus, str]:
    """The exit status for a session that cannot go on, and the line that explains it."""
    reason = printable(str(failure))
    if isinstance(failure, SessionRefused):
        return ExitStatus.REFUSED, f"papaya-chat: the server refused us: {reason}"
    return (
        ExitStatus.UNREACHABLE,
        f"papaya-chat: cannot reach the server at {server_name}: {reason}",
    )
