"""`python -m sim`: run seeds of the deterministic simulation.

    python -m sim --seed 17 --profile crash            replay one seed
    python -m sim --seeds 0..99 --profile swarm         run a range (both ends included)
    python -m sim --seeds 0..9999 --profile all --jobs 2 every profile, on two processes

One line per failure (or per seed with --verbose), a progress line on a terminal, then a
summary: failures grouped by invariant with a replay line each, and the speed figures.
A failing seed's JSON-lines trace goes to --trace-dir. Exit status 1 if any seed failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from sim.profiles import NAMES
from sim.scheduler import check
from sim.sweep import jobs_for, sweep


def seed_range(text: str) -> range:
    """`A..B` (both included) or a single number."""
    first, sep, last = text.partition("..")
    try:
        return range(int(first), int(last if sep else first) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not N or A..B") from None


def positive(text: str) -> int:
    """A whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    """Run the seeds the command line asks for; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m sim", description=__doc__.splitlines()[0])
    seeds = parser.add_mutually_exclusive_group(required=True)
    seeds.add_argument("--seed", type=seed_range, help="one seed")
    seeds.add_argument("--seeds", type=seed_range, help="a range of seeds, A..B")
    parser.add_argument(
        "--profile", choices=(*NAMES, "all"), default="smoke", help="a profile, or all of them"
    )
    parser.add_argument(
        "--jobs",
        type=positive,
        default=os.cpu_count() or 1,
        help="worker processes (default: one per core)",
    )
    parser.add_argument("--stop-on-failure", action="store_true", help="stop at the first failure")
    parser.add_argument(
        "--trace-dir", type=Path, default=Path(tempfile.gettempdir()) / "papaya-sim"
    )
    parser.add_argument("--verbose", action="store_true", help="a line for every seed")
    args = parser.parse_args(argv)
    check()
    profiles = NAMES if args.profile == "all" else (args.profile,)
    jobs = jobs_for(profiles, args.seed or args.seeds)
    found = sweep(
        jobs,
        args.trace_dir,
        workers=min(args.jobs, len(jobs)),
        stop_on_failure=args.stop_on_failure,
        verbose=args.verbose,
        progress=sys.stderr if len(jobs) > 1 else None,
    )
    print(found.summary(), file=sys.stderr)
    return 1 if found.failures else 0


if __name__ == "__main__":
    sys.exit(main())
