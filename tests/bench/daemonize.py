"""Run a command as a daemon does: fork, setsid, fork again, the first two processes exit.

``python tests/bench/daemonize.py COMMAND...``: the command ends up in a session and a
process group of its own, reparented away from whoever started this script, which exits at
once (as ``daemon(3)`` and the original papayaChat daemon do). The tests start it through
the bench to check that a server which detaches is still measured and stopped.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    command = sys.argv[1:]
    if not command:
        sys.exit("usage: daemonize.py COMMAND...")
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
