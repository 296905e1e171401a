"""The run's trace: a bounded window of recent events plus a digest of all of them.

Every event is one JSON object (`t` simulated seconds, `step` scheduler steps, `kind`, and
fields). The digest covers every event ever recorded, so two runs of the same seed can be
compared exactly; only the newest `window` events are kept in memory for the JSON-lines file
written when a run fails.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable
from pathlib import Path

TRACE_WINDOW = 50_000
# json.dumps(..., separators=(",", ":")) builds an encoder per call; this one is built once.
_encode = json.JSONEncoder(separators=(",", ":")).encode


class Trace:
    """Records events; `digest` identifies the whole run."""

    def __init__(self, now: Callable[[], tuple[float, int]], window: int = TRACE_WINDOW) -> None:
        self._now = now
        self._events: deque[str] = deque(maxlen=window)
        self._hash = hashlib.sha256()
        self.count = 0

    def record(self, kind: str, **fields: object) -> None:
        """Add one event stamped with the current simulated time and step."""
        t, step = self._now()
        line = _encode({"t": round(t, 6), "step": step, "kind": kind, **fields})
        self._events.append(line)
        self._hash.update((line + "\n").encode())
        self.count += 1

    @property
    def digest(self) -> str:
        """SHA-256 of every event so far, in order."""
        return self._hash.hexdigest()

    def write(self, path: Path) -> None:
        """Write the kept events as JSON lines (the oldest ones are gone past `window`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as out:
            if self.count > len(self._events):
                dropped = self.count - len(self._events)
                out.write(json.dumps({"kind": "trace_truncated", "dropped_events": dropped}))
                out.write("\n")
            for line in self._events:
                out.write(line + "\n")
