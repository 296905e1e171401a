"""`python -m papaya_trio` is the `papaya-trio` command."""

import sys

from papaya_trio.cli import main

sys.exit(main())
