"""A progress display for the sweep, on stderr.

On a terminal it rewrites one status line in place; otherwise (CI, a log file) it prints
one line per finished trial, so logs stay readable.
"""

from __future__ import annotations

import time
from typing import TextIO


class Progress:
    """Counts finished trials and shows what runs now, with a rough time left."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self._total = total
        self._done = 0
        self._stream = stream
        self._tty = stream.isatty()
        self._started = time.monotonic()

    def _eta(self) -> str:
        if not self._done:
            return ""
        per_trial = (time.monotonic() - self._started) / self._done
        left = per_trial * (self._total - self._done)
        return f", about {left:.0f} s left"

    def start(self, label: str) -> None:
        """A trial starts."""
        if self._tty:
            line = f"[{self._done + 1}/{self._total}] {label}{self._eta()}"
            self._stream.write(f"\r\x1b[K{line}")
            self._stream.flush()

    def finish(self, label: str, summary: str) -> None:
        """A trial ended; `summary` is one short line of its result."""
        self._done += 1
        prefix = "\r\x1b[K" if self._tty else ""
        self._stream.write(f"{prefix}[{self._done}/{self._total}] {label}: {summary}\n")
        self._stream.flush()
