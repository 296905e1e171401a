"""`python -m sim`: run seeds of the deterministic simulation.

    python -m sim --seed 17 --profile crash     replay one seed
    python -m sim --seeds 0..99 --profile swarm  run a range (both ends included)

One line per failure (or per seed with --verbose), then a summary with the speed figures.
A failing seed's JSON-lines trace goes to --trace-dir. Exit status 1 if any seed failed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from sim.profiles import NAMES
from sim.runner import run_seed
from sim.scheduler import check


def seed_range(text: str) -> range:
    """`A..B` (both included) or a single number."""
    first, sep, last = text.partition("..")
    try:
        return range(int(first), int(last if sep else first) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not N or A..B") from None


def main(argv: list[str] | None = None) -> int:
    """Run the seeds the command line asks for; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m sim", description=__doc__.splitlines()[0])
    seeds = parser.add_mutually_exclusive_group(required=True)
    seeds.add_argument("--seed", type=seed_range, help="one seed")
    seeds.add_argument("--seeds", type=seed_range, help="a range of seeds, A..B")
    parser.add_argument("--profile", choices=NAMES, default="smoke")
    parser.add_argument(
        "--trace-dir", type=Path, default=Path(tempfile.gettempdir()) / "papaya-sim"
    )
    parser.add_argument("--verbose", action="store_true", help="a line for every seed")
    args = parser.parse_args(argv)
    check()
    failures = runs = 0
    wall = sim = 0.0
    for seed in args.seed or args.seeds:
        result, world = run_seed(seed, args.profile)
        runs += 1
        wall += result.wall_seconds
        sim += result.sim_seconds
        trace_path = None
        if result.failure is not None:
            failures += 1
            trace_path = args.trace_dir / f"sim-{result.profile}-{seed}.jsonl"
            world.trace.write(trace_path)
        if result.failure is not None or args.verbose:
            print(result.report(trace_path), flush=True)
    print(
        f"{runs} seeds, {failures} failed; {60 * runs / wall:.1f} seeds/minute, "
        f"{sim / wall:.1f} simulated seconds per wall second",
        file=sys.stderr,
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
