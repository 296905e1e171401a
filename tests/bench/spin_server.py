"""A stub server that uses CPU on its own: listens on a port and spins about half the time.

``python tests/bench/spin_server.py PORT``: accepts (and closes) connections, so the bench
sees it listening, and otherwise alternates 10 ms of busy loop with 10 ms of sleep, so it
has CPU time worth measuring. A forked child spins too (so a measurement that forgets the
children counts half) and exits when its parent is gone. Both stop after `LIFETIME`
seconds at the latest, whoever forgets to signal them.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time

BUSY = 0.01
IDLE = 0.01
LIFETIME = 120.0


def main() -> None:
    end = time.monotonic() + LIFETIME
    listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    parent = os.getpid()
    if os.fork() == 0:
        listener.close()
        while time.monotonic() < end and os.getppid() == parent:
            _spin()
            time.sleep(IDLE)
        os._exit(0)
    while time.monotonic() < end:
        _spin()
        if select.select([listener], [], [], IDLE)[0]:
            listener.accept()[0].close()


def _spin() -> None:
    end = time.process_time() + BUSY
    while time.process_time() < end:
        pass


if __name__ == "__main__":
    main()
