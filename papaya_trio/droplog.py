"""The papayaChat dialect's dropped lines, logged once per connection.

The dialect cannot report errors, so the server log is the only place a dropped line shows. A
client that breaks a rule on every line (a name past the bound, say) would write a log line per
message; instead the first drop of a connection is logged with its reason and the rest are
counted, and the count is logged when the connection ends.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class DroppedLines:
    """Counts one connection's dropped lines; logs the first and, at the end, the total."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.count = 0

    def note(self, why: str) -> None:
        """A line was dropped because of `why`."""
        self.count += 1
        if self.count == 1:
            logger.warning("%s: dropped a line (later drops are only counted): %s", self.label, why)

    def summarise(self) -> None:
        """Log how many lines were dropped in all, if more than the one already logged."""
        if self.count > 1:
            logger.warning("%s: dropped %d lines in all", self.label, self.count)
