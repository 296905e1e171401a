"""`python -m papaya_clients.terminal` runs `papaya-chat`."""

from __future__ import annotations

import sys

from papaya_clients.terminal.app import main

sys.exit(main())
