"""``python -m papaya_trio.bench``: the bench without the papaya-trio CLI."""

from __future__ import annotations

import argparse
import sys

from papaya_trio.bench.command import add_arguments, run


def main() -> int:
    """Parse the bench's options and run it."""
    parser = argparse.ArgumentParser(prog="python -m papaya_trio.bench")
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
