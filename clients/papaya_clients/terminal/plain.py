"""`--plain` and `--once`: the client for pipes and scripts.

Plain mode sends every line of stdin as one message and prints every message it receives to
stdout as `YYYY-MM-DD HH:MM user: text` (local time), one per line; connection news and errors
go to stderr. The end of stdin does not end plain mode: it keeps printing until interrupted.

`--once` sends stdin's lines, waits until the server has confirmed all of them and exits; it
prints no messages. Its exit status tells a cron job what happened (see `ExitStatus`); a
failure is explained on stderr.

Blocking file I/O runs in worker threads so the trio loop never stalls on a slow pipe; a stdin
read is abandoned on cancellation (the thread ends with the process).
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Awaitable, Callable
from typing import TextIO, TypeVar

import trio

from papaya_clients.terminal.config import ClientConfig
from papaya_clients.terminal.exit_status import ExitStatus, failure_exit
from papaya_clients.terminal.formatting import event_line, plain_line, printable
from papaya_clients.terminal.session import (
    Connected,
    Rejected,
    SessionFailed,
    open_session,
)
from papaya_clients.terminal.transport import Connector
from papaya_trio.protocol.client import ChatMessage, LocalProtocolError, message_lines

#: Bytes read from stdin at once.
STDIN_CHUNK_BYTES = 65536
#: The longest stdin line accepted; longer ones could never be sent anyway.
MAX_STDIN_LINE_BYTES = 64 * 1024
#: Lines waiting to be written to stdout or stderr.
OUTPUT_BUFFER = 256

_E = TypeVar("_E", bound=Exception)


class InputError(Exception):
    """Stdin holds something that cannot be sent."""


class Printer:
    """Writes lines to stdout and stderr in order from one task, batching in a worker thread."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[tuple[TextIO, str]](OUTPUT_BUFFER)

    def __repr__(self) -> str:
        return f"<Printer {self._receive.statistics().current_buffer_used} queued>"

    async def print(self, text: str, *, err: bool = False) -> None:
        """Queue one line, waiting while the output is behind."""
        await self._send.send((sys.stderr if err else sys.stdout, text))

    async def serve(self) -> None:
        """Write queued lines until `close` is called and everything queued is written."""
        async with self._receive:
            async for first in self._receive:
                batch = [first]
                while len(batch) < OUTPUT_BUFFER:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await trio.to_thread.run_sync(_write_batch, batch)

    def close(self) -> None:
        """Accept no more lines; `serve` returns once the queued ones are written."""
        self._send.close()


def _write_batch(batch: list[tuple[TextIO, str]]) -> None:
    streams = set()
    for stream, text in batch:
        stream.write(text + "\n")
        streams.add(stream)
    for stream in streams:
        stream.flush()


async def read_lines(on_line: Callable[[str], Awaitable[None]], fd: int = 0) -> None:
    """Call `on_line` for each line of `fd` (decoded as UTF-8, bad bytes replaced) until EOF."""
    buffer = bytearray()
    while chunk := await trio.to_thread.run_sync(
        os.read, fd, STDIN_CHUNK_BYTES, abandon_on_cancel=True
    ):
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            await on_line(line.decode(errors="replace"))
        if len(buffer) > MAX_STDIN_LINE_BYTES:
            raise InputError(f"a line of input is longer than {MAX_STDIN_LINE_BYTES} bytes")
    if buffer:
        await on_line(buffer.decode(errors="replace"))


async def run_plain(
    config: ClientConfig,
    *,
    server_name: str,
    connect: Connector,
    rng: random.Random,
    once: bool,
    give_up_after: float,
) -> ExitStatus:
    """Run plain or once mode and return the exit status."""
    session, send_events, receive_events = open_session(config, connect, rng)
    printer = Printer()
    status = ExitStatus.OK

    async def send_line(line: str) -> None:
        nonlocal status
        for text in message_lines(line):
            try:
                await session.send(text)
            except LocalProtocolError:
                status = ExitStatus.NOT_SENT
                await printer.print(f"papaya-chat: not sent, too long: {text[:40]}…", err=True)

    async def show_events() -> None:
        nonlocal status
        async with receive_events:
            async for event in receive_events:
                if isinstance(event, ChatMessage):
                    if not once:
                        await printer.print(plain_line(event))
                    continue
                if isinstance(event, Rejected):
                    status = ExitStatus.NOT_SENT
                line = event_line(event, server_name)
                if line is not None and not (once and isinstance(event, Connected)):
                    await printer.print(f"papaya-chat: {line}", err=True)

    async with trio.open_nursery() as output:
        output.start_soon(printer.serve)
        async with trio.open_nursery() as events:
            events.start_soon(show_events)
            try:
                async with send_events, trio.open_nursery() as work:
                    work.start_soon(session.run)
                    if once:
                        with trio.move_on_after(give_up_after) as deadline:
                            await read_lines(send_line)
                            await session.wait_connected()  # with no input, still check the key
                            await session.wait_all_confirmed()
                        if deadline.cancelled_caught:
                            status = ExitStatus.NOT_SENT
                            await printer.print(
                                f"papaya-chat: timed out after {give_up_after:g} s with"
                                f" {session.pending_count} message(s) unconfirmed",
                                err=True,
                            )
                    else:
                        await read_lines(send_line)
                        await trio.sleep_forever()
                    work.cancel_scope.cancel()
            except* SessionFailed as group:
                status, explanation = failure_exit(_first(group), server_name)
                await printer.print(explanation, err=True)
            except* InputError as group:
                status = ExitStatus.NOT_SENT
                await printer.print(f"papaya-chat: {printable(str(_first(group)))}", err=True)
        printer.close()
    return status


def _first(group: BaseExceptionGroup[_E]) -> _E:
    """The first exception in `group`, looking into nested groups."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first
