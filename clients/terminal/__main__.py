"""`python -m clients.terminal` runs `papaya-chat`."""

from __future__ import annotations

import sys

from clients.terminal.app import main

sys.exit(main())
