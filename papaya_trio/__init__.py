"""papaya-trio: a self-hosted chat server on trio.

Every client gets a nursery with a recv task and a send task over one append-only log; a
memory-channel broadcaster wakes the send tasks. See README.md for the tour.
"""

from __future__ import annotations

__version__ = "0.1.0"
SERVER_NAME = f"papaya-trio {__version__}"
