"""The ``papaya-trio bench`` sub-command: options, the sweep, and its outputs.

The CLI wires it with ``add_arguments(subparser)`` and ``run(args)``. Profiles:

- ``paper``: the paper's experiment against the bench's sink servers (this module).
- ``chat``: the real server (``papaya-trio serve``) in trio and fork mode with a chat
  workload. Not written yet: it needs the core server. It will be a second list of
  `ServerSpec` (see `servers`) and a chat load generator measuring delivery latency; the
  runner, sampler, report and plot already take any list of servers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from papaya_trio.bench import runner, servers
from papaya_trio.bench.loadgen import DEFAULT_RATE_BITS, DEFAULT_TICK, MAX_CONNECTIONS
from papaya_trio.bench.plot import plot
from papaya_trio.bench.progress import Progress
from papaya_trio.bench.report import format_table, write_csv, write_json

PROFILES = ("paper", "chat")


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not counts or not all(1 <= n <= MAX_CONNECTIONS for n in counts):
        raise argparse.ArgumentTypeError(f"connection counts must be in 1..{MAX_CONNECTIONS}")
    return counts


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [m for m in modes if m not in servers.SINK_MODES]
    if not modes or unknown:
        raise argparse.ArgumentTypeError(
            f"modes must be among {', '.join(servers.SINK_MODES)}; got {text!r}"
        )
    return modes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bench's options to `parser` (a sub-command parser or a fresh one)."""
    parser.add_argument("--profile", choices=PROFILES, default="paper")
    parser.add_argument(
        "--connections",
        type=_counts,
        default=runner.DEFAULT_CONNECTIONS,
        help="comma-separated connection counts (default: 1,2,4,8,16,32,64)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=runner.DEFAULT_DURATION,
        help="measured seconds per trial (default: 60, as the paper)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=runner.DEFAULT_WARMUP,
        help="seconds of load before sampling starts (default: 2)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="trials per mode and count")
    parser.add_argument(
        "--modes",
        type=_modes,
        default=servers.DEFAULT_PAPER_MODES,
        help=f"sink modes, among {', '.join(servers.SINK_MODES)} (default: trio,fork)",
    )
    parser.add_argument(
        "--external",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="also measure COMMAND, a server listening on the port given as {port}",
    )
    parser.add_argument("--recv-size", type=int, default=None, help="bytes per read for the sinks")
    parser.add_argument(
        "--rate-bits",
        type=float,
        default=DEFAULT_RATE_BITS,
        help="per-connection rate, bit/s (default: 1e6)",
    )
    parser.add_argument(
        "--tick", type=float, default=DEFAULT_TICK, help="load pacing period, s (default: 0.01)"
    )
    parser.add_argument(
        "--interval", type=float, default=runner.DEFAULT_INTERVAL, help="sampling period, s"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and load")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("bench-results"),
        help="where the JSON, CSV and PNG files go (default: bench-results)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the sweep the options describe; print the table; write the files."""
    if args.profile == "chat":
        print(
            "papaya-trio bench: the chat profile is not available yet"
            " (it needs the core server); use --profile paper",
            file=sys.stderr,
        )
        return 2
    try:
        specs = [servers.sink_spec(mode, args.recv_size) for mode in args.modes]
        specs += [servers.external_spec(definition) for definition in args.external]
        config = runner.SweepConfig(
            servers=tuple(specs),
            connections=args.connections,
            duration=args.duration,
            warmup=args.warmup,
            interval=args.interval,
            repeat=args.repeat,
            rate_bits=args.rate_bits,
            tick=args.tick,
            pin=not args.no_pin,
        )
    except ValueError as exc:
        print(f"papaya-trio bench: {exc}", file=sys.stderr)
        return 2
    progress = Progress(len(runner.trial_order(config)), sys.stderr)

    def finished(label: str, trial: runner.Trial) -> None:
        flag = f" FLAGGED: {trial.flag_reason}" if trial.flagged else ""
        progress.finish(label, f"{trial.cpu_percent:.2f}% CPU, Cv {trial.cv:.3f}{flag}")

    try:
        result = trio.run(runner.run_sweep, config, args.profile, progress.start, finished)
    except runner.BenchError as exc:
        print(f"papaya-trio bench: {exc}", file=sys.stderr)
        return 1
    points = result.points()
    print(format_table(points))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = args.output_dir / f"bench-{args.profile}"
    write_json(result, stem.with_suffix(".json"))
    write_csv(points, stem.with_suffix(".csv"))
    title = f"papaya-trio bench, {args.profile} profile ({args.duration:g} s per trial)"
    plot(points, stem.with_suffix(".png"), title)
    print(f"wrote {stem}.json, {stem}.csv and {stem}.png", file=sys.stderr)
    return 0
