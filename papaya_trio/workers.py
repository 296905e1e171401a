"""`serve --workers K`: K trio-mode servers of one room on one machine, sharing its ports.

Theory of operation
-------------------
Trio mode runs a room on one core; several cores need several processes, and with the Redis
store any number of processes serve one room. This supervisor starts K children, each the
same `papaya-trio serve` command line with `--workers 1 --reuse-port` appended (later flags
win), so every child binds the same `tcp_port` and `http_port` with SO_REUSEPORT and the
kernel spreads new connections over them. The children are ordinary servers: their own
stream reader, broadcaster, sessions and graceful shutdown; they log to the supervisor's
stderr. Before starting them the supervisor makes the room's key once, so K children
starting at the same moment never race to create it.

The supervisor owns nothing else and does nothing clever: SIGTERM or SIGINT is passed on to
every child, which shuts down gracefully, and the supervisor exits 0 once all have. A child
that ends by itself (a crash, a kill) ends the group: the others are stopped too and the
supervisor exits 1, so a service manager restarts the whole, and the clients reconnect with
`since` and lose nothing (the log is in Redis). A child that outlives `shutdown_deadline`
plus STOP_MARGIN after being asked to stop is killed. No child outlives the supervisor's
nursery.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import trio

from papaya_trio.config import ServerConfig
from papaya_trio.service import load_or_create_key, make_data_dir

logger = logging.getLogger(__name__)

STOP_MARGIN = 5.0  # seconds a child gets beyond shutdown_deadline before it is killed


async def run_workers(config: ServerConfig, serve_argv: Sequence[str]) -> int:
    """Run `config.workers` copies of `serve_argv` (a `serve` command line) until a signal or
    a child's end; return the exit status."""
    make_data_dir(Path(config.data_dir))
    load_or_create_key(config)
    command = [sys.executable, "-m", "papaya_trio", *serve_argv, "--workers", "1", "--reuse-port"]
    children: list[trio.Process] = []
    status = 0
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            for number in range(1, config.workers + 1):
                child = await trio.lowlevel.open_process(command, stdin=subprocess.DEVNULL)
                children.append(child)
                logger.info("worker %d started (pid %d)", number, child.pid)
            ended = trio.Event()
            for number, child in enumerate(children, 1):
                nursery.start_soon(_watch, number, child, ended)
            signum = await _first_signal_or_end(signals, ended)
            if signum is None:
                status = 1
                logger.error("a worker ended by itself: stopping the others")
            else:
                name = signal.Signals(signum).name
                logger.info("%s received: stopping %d workers", name, len(children))
            deadline = config.shutdown_deadline + STOP_MARGIN
            for child in children:
                nursery.start_soon(_stop, child, deadline)
    return status


async def _watch(number: int, child: trio.Process, ended: trio.Event) -> None:
    code = await child.wait()
    if code != 0:
        logger.warning("worker %d (pid %d) exited with %d", number, child.pid, code)
    ended.set()


async def _first_signal_or_end(signals: AsyncIterator[int], ended: trio.Event) -> int | None:
    """The first signal received, or None if a child ended first."""
    received: list[int] = []
    async with trio.open_nursery() as nursery:

        async def first_signal() -> None:
            async for signum in signals:
                received.append(signum)
                nursery.cancel_scope.cancel()
                return

        async def first_end() -> None:
            await ended.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(first_signal)
        nursery.start_soon(first_end)
    return received[0] if received else None


async def _stop(child: trio.Process, deadline: float) -> None:
    """SIGTERM, then SIGKILL after `deadline` seconds; shielded, so it always reaps."""
    with trio.CancelScope(shield=True):
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
        with trio.move_on_after(deadline):
            await child.wait()
            return
        logger.warning("worker pid %d did not stop in %.0f s: killing it", child.pid, deadline)
        child.kill()
        await child.wait()
