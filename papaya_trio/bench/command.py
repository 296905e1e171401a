"""The ``papaya-trio bench`` sub-command: options, the sweep, and its outputs.

The CLI wires it with ``add_arguments(subparser)`` and ``run(args)``. Profiles:

- ``paper``: the paper's experiment against the bench's sink servers: every connection
  streams ``message\\n`` at ``--rate-bits``.
- ``chat``: the real server (``papaya-trio serve``) in trio and fork mode, N clients in one
  room, ``--rate`` messages per second in total from ``--senders`` of them, each fanned out
  to every client. ``--rate 0`` holds N idle connections (the memory-per-connection check).
  ``--dialect papaya`` loads it in the papayaChat dialect instead (so the original daemon can
  be measured with ``--external``); ``--store redis`` and ``--nodes K`` run it on the Redis
  store, as K server processes sharing one Redis that each trial starts. ``--rate 10,20,30``
  steps through several rates, and ``--node-cpu 0.2`` caps each server node at a fifth of
  a CPU (`cpuquota`), so that on a small machine the nodes saturate before the load
  generator does.

Both run the same sweep (`runner`) with their own `Workload`, table and figure. The
modules that need the bench's optional dependencies (psutil, matplotlib) are imported when
the bench runs, not when the command line is built, so ``papaya-trio serve`` works without
them.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import trio

from papaya_trio.bench import chatload, chatwire, cpuquota, servers, workloads
from papaya_trio.bench.loadgen import DEFAULT_RATE_BITS, DEFAULT_TICK
from papaya_trio.bench.steadiness import HOST_CV
from papaya_trio.bench.system import IDLE_POLL, IDLE_SYSTEM, idle_polling, raise_open_file_limit
from papaya_trio.bench.workloads import ChatWorkload, PaperWorkload, SweepConfig, Workload
from papaya_trio.chatlog import FsyncPolicy

if TYPE_CHECKING:
    from papaya_trio.bench.runner import Point, Trial

PROFILES = ("paper", "chat")
#: Room the chat server gets beyond the largest N (the bench never needs it; a margin
#: against a client of a previous trial still being counted).
SERVER_CONNECTION_MARGIN = 64
#: The most server processes one trial may start with --nodes.
MAX_NODES = 64
#: Open files the bench's processes need beside one per connection.
SPARE_FILES = 256


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("connection counts must be positive")
    return counts


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not rates or not all(0 <= rate < math.inf for rate in rates):  # NaN fails too
        raise argparse.ArgumentTypeError("message rates must be finite and >= 0")
    if len(rates) > workloads.MAX_RATES or len(set(rates)) != len(rates):
        raise argparse.ArgumentTypeError(
            f"at most {workloads.MAX_RATES} message rates, each given once"
        )
    return tuple(sorted(rates))


def _fraction(text: str) -> float:
    try:
        return cpuquota.CpuQuota.of(float(text)).fraction
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _names(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError("no mode given")
    return names


def _nodes(text: str) -> tuple[int, ...]:
    counts = _counts(text)
    if max(counts) > MAX_NODES:
        raise argparse.ArgumentTypeError(f"at most {MAX_NODES} nodes")
    return counts


def _stores(text: str) -> tuple[str, ...]:
    stores = _names(text)
    if unknown := set(stores) - set(servers.STORES):
        raise argparse.ArgumentTypeError(
            f"unknown store {sorted(unknown)[0]!r}; choose from {', '.join(servers.STORES)}"
        )
    return stores


def _chat_specs(args: argparse.Namespace, limit: int) -> list[servers.ServerSpec]:
    """Every (mode, store, nodes) the options name that can run: fork mode only on the file
    store, several nodes only on Redis. ValueError when none can."""
    nodes = args.nodes or (1,)
    stores = args.store or (("file",) if nodes == (1,) else ("redis",))
    modes = args.modes or servers.CHAT_MODES
    specs = []
    for mode in modes:
        if mode not in servers.CHAT_MODES:
            raise ValueError(
                f"unknown server mode {mode!r}; choose from {', '.join(servers.CHAT_MODES)}"
            )
        for store in stores:
            for count in nodes:
                try:
                    specs.append(servers.chat_spec(mode, args.fsync, limit, store, count))
                except ValueError:
                    continue  # e.g. fork mode with --store file,redis: it runs on the file only
    if not specs:
        # Say why with the first combination's own complaint.
        servers.chat_spec(modes[0], args.fsync, limit, stores[0], nodes[0])
    return specs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bench's options to `parser` (a sub-command parser or a fresh one)."""
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default="paper",
        help="paper: sink servers under a token-bucket load, as the paper measured;"
        " chat: the real chat server in both modes (default: paper)",
    )
    parser.add_argument(
        "--connections",
        type=_counts,
        default=None,
        help="comma-separated connection counts (default: paper 1,2,4,8,16,32,64;"
        " chat 16,64,256,1000)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="measured seconds per trial (default: paper 60, as the paper; chat 20)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=workloads.DEFAULT_WARMUP,
        help="seconds of load before sampling starts (default: 2)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="trials per mode and connection count; the report shows their mean and range"
        " (default: 1)",
    )
    parser.add_argument(
        "--modes",
        type=_names,
        default=None,
        help=f"paper: sink modes among {', '.join(servers.SINK_MODES)};"
        f" chat: server modes among {', '.join(servers.CHAT_MODES)}"
        " (default: paper trio,trio-batched,fork; chat trio,fork)",
    )
    parser.add_argument(
        "--external",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="also measure COMMAND, a server listening on the port given as {port}"
        " ({data_dir}: a fresh folder per trial, holding the chat room's key file); CPU and"
        " memory count every process it starts, a daemon that detaches included",
    )
    parser.add_argument(
        "--interval", type=float, default=workloads.DEFAULT_INTERVAL, help="sampling period, s"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and load")
    parser.add_argument(
        "--cpu-idle",
        choices=(IDLE_POLL, IDLE_SYSTEM),
        default=IDLE_POLL,
        help="poll: keep idle CPUs polling during the sweep, where allowed (root), so the"
        " cost of waking a halted CPU does not blur the samples; system: leave them alone"
        " (default: poll)",
    )
    parser.add_argument(
        "--host-check",
        type=float,
        default=workloads.DEFAULT_HOST_CHECK,
        metavar="SECONDS",
        help="before each N and repeat, time a fixed loop on the server CPU for this long:"
        " its Cv is the floor of the trials' Cv on this machine (default: 5; 0: skip)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("bench-results"),
        help="where the JSON, CSV and PNG files go (default: bench-results)",
    )
    paper = parser.add_argument_group("paper profile")
    paper.add_argument("--recv-size", type=int, default=None, help="bytes per read for the sinks")
    paper.add_argument(
        "--rate-bits",
        type=float,
        default=DEFAULT_RATE_BITS,
        help="per-connection rate, bit/s (default: 1e6)",
    )
    paper.add_argument(
        "--tick", type=float, default=DEFAULT_TICK, help="load pacing period, s (default: 0.01)"
    )
    chat = parser.add_argument_group("chat profile")
    chat.add_argument(
        "--rate",
        type=_rates,
        default=(chatload.DEFAULT_RATE,),
        help="messages per second across the room; comma-separated to step through several,"
        " lowest first, each a sweep of its own (default: 20; 0: idle connections)",
    )
    chat.add_argument(
        "--senders",
        type=int,
        default=chatload.DEFAULT_SENDERS,
        help="clients that send, in turn (default: 8)",
    )
    chat.add_argument(
        "--message-bytes",
        type=int,
        default=chatload.DEFAULT_MESSAGE_BYTES,
        help="text length of each message (default: 64)",
    )
    chat.add_argument(
        "--dialect",
        choices=chatwire.DIALECTS,
        default=chatload.DEFAULT_DIALECT,
        help="what the clients speak: native (JSON lines) or papaya (the papayaChat dialect:"
        " 128-byte key, 'user: text' lines; works with the original daemon) (default: native)",
    )
    chat.add_argument(
        "--store",
        type=_stores,
        default=None,
        help="the server's log store, comma-separated to compare: file, redis (a Redis the"
        " bench starts for each trial, on its own CPU where there is one; trio mode only)"
        " (default: file; redis with --nodes above 1)",
    )
    chat.add_argument(
        "--nodes",
        type=_nodes,
        default=None,
        metavar="K",
        help="server processes sharing the room through Redis, each pinned to its own CPU,"
        " the clients spread evenly over them; comma-separated to compare (default: 1)",
    )
    chat.add_argument(
        "--node-cpu",
        type=_fraction,
        default=None,
        metavar="FRACTION",
        help="cap each server node (or the one server) at FRACTION of one CPU, e.g. 0.2,"
        " through a cgroup CPU quota, so it saturates while the load generator and Redis"
        " keep the rest of a small machine; refused where no quota can be set (default: none)",
    )
    chat.add_argument(
        "--fsync",
        choices=[policy.value for policy in FsyncPolicy],
        default=FsyncPolicy.NEVER.value,
        help="the server's fsync policy, and Redis's appendfsync with it (always, everysec,"
        " no) (default: never, so the disk is not measured)",
    )


def _sweep_config(args: argparse.Namespace) -> SweepConfig:
    """The sweep the options describe; ValueError for a bad combination."""
    workload: Workload
    if args.profile == "chat":
        counts = args.connections or workloads.CHAT_CONNECTIONS
        specs = _chat_specs(args, max(counts) + SERVER_CONNECTION_MARGIN)
        rates = args.rate
        workload = ChatWorkload(rates[0], args.senders, args.message_bytes, dialect=args.dialect)
        duration = args.duration or workloads.CHAT_DURATION
        # The server and the generator inherit this process's limit.
        raise_open_file_limit(max(counts) + SPARE_FILES)
    else:
        if args.store or args.nodes or args.node_cpu or args.dialect != chatload.DEFAULT_DIALECT:
            raise ValueError(
                "--store, --nodes, --node-cpu and --dialect belong to the chat profile"
            )
        rates = ()
        modes = args.modes or servers.DEFAULT_PAPER_MODES
        counts = args.connections or workloads.PAPER_CONNECTIONS
        specs = [servers.sink_spec(mode, args.recv_size) for mode in modes]
        workload = PaperWorkload(args.rate_bits, args.tick)
        duration = args.duration or workloads.PAPER_DURATION
    specs += [servers.external_spec(definition) for definition in args.external]
    return SweepConfig(
        servers=tuple(specs),
        workload=workload,
        connections=counts,
        duration=duration,
        warmup=args.warmup,
        interval=args.interval,
        repeat=args.repeat,
        pin=not args.no_pin,
        host_check=args.host_check,
        rates=rates,
        node_cpu=args.node_cpu,
    )


#: Signals that stop a sweep the way Ctrl-C does: its servers and generators stopped.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
T = TypeVar("T")


async def _unless_stopped(sweep: Callable[[], Awaitable[T]]) -> T | int:
    """Run `sweep`; a stop signal cancels it (every trial stops its server and generator on
    the way out) and its number is returned instead of the result."""
    received: list[int] = []
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:

            async def cancel_on_signal() -> None:
                async for signum in signals:
                    received.append(signum)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(cancel_on_signal)
            result = await sweep()
            nursery.cancel_scope.cancel()
            return result
    return received[0]


def _trial_summary(trial: Trial) -> str:
    summary = f"{trial.cpu_percent:.2f}% CPU, Cv {trial.cv:.3f}"
    if (host_cv := trial.figures.get(HOST_CV)) is not None:
        summary += f" (host Cv {host_cv:.3f})"
    if (p99 := trial.figures.get("latency_p99_ms")) is not None:
        summary += f", p99 {p99:.1f} ms, lost {trial.figures.get('lost', 0):.0f}"
    return summary + (f" FLAGGED: {trial.flag_reason}" if trial.flagged else "")


def run(args: argparse.Namespace) -> int:
    """Run the sweep the options describe; print the table; write the files."""
    try:
        config = _sweep_config(args)
        if config.node_cpu is not None:
            quota = cpuquota.CpuQuota.of(config.node_cpu)
            interface = cpuquota.check_available(quota, cpuquota.v1_cpu_root())
            print(f"papaya-trio bench: node CPU quota: {interface}", file=sys.stderr)
    except (ValueError, OSError, cpuquota.QuotaError) as exc:
        print(f"papaya-trio bench: {exc}", file=sys.stderr)
        return 2
    try:
        from papaya_trio.bench import runner
        from papaya_trio.bench.plot import plot, plot_chat
        from papaya_trio.bench.progress import Progress
        from papaya_trio.bench.report import (
            format_chat_table,
            format_table,
            published_json,
            write_csv,
            write_json,
        )
    except ModuleNotFoundError as exc:
        print(
            f"papaya-trio bench: {exc.name} is missing; install the bench's dependencies"
            " with: pip install 'papaya-trio[bench]'",
            file=sys.stderr,
        )
        return 2
    progress = Progress(len(runner.trial_order(config)), sys.stderr)

    def finished(label: str, trial: Trial) -> None:
        progress.finish(label, _trial_summary(trial))

    def failed(label: str, reason: str) -> None:
        progress.finish(label, f"FAILED: {reason}; larger N skipped for this mode")

    with idle_polling(args.cpu_idle) as cpu_idle:
        print(f"papaya-trio bench: idle CPUs: {cpu_idle}", file=sys.stderr)
        outcome = trio.run(
            _unless_stopped, partial(runner.run_sweep, config, progress.start, finished, failed)
        )
    if isinstance(outcome, int):
        name = signal.Signals(outcome).name
        print(
            f"papaya-trio bench: {name}: stopped, servers stopped, nothing written", file=sys.stderr
        )
        return 128 + outcome
    result = outcome
    result.config["cpu_idle"] = cpu_idle
    points = result.points()
    if not points:
        print("papaya-trio bench: no trial could be run", file=sys.stderr)
        return 1
    profile = config.workload.profile
    table: Callable[[Sequence[Point]], str] = format_table
    figure = plot
    extra: dict[str, object] = {"paper": published_json()}
    if profile == "chat":
        table, figure, extra = format_chat_table, plot_chat, {}
    print(table(points))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = args.output_dir / f"bench-{profile}"
    write_json(result, stem.with_suffix(".json"), extra)
    write_csv(points, stem.with_suffix(".csv"))
    title = (
        f"papaya-trio bench, {profile} profile ({config.duration:g} s per trial,"
        f" idle CPUs {cpu_idle.split()[0]})"
    )
    if profile == "chat":
        title += f", {','.join(f'{rate:g}' for rate in args.rate)} msg/s, fsync {args.fsync}"
        if args.node_cpu is not None:
            title += f", nodes capped at {args.node_cpu:.0%} of a CPU"
        if args.dialect != chatload.DEFAULT_DIALECT:
            title += f", {args.dialect} dialect"
    figure(points, stem.with_suffix(".png"), title)
    print(f"wrote {stem}.json, {stem}.csv and {stem}.png", file=sys.stderr)
    return 0 if not result.failures else 1
