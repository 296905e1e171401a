"""The sweep's figures, one line per mode (and message rate) against the number of connections.

The paper profile uses the paper's layout: (a) Cv, (b) mean CPU %, with the paper's
published series dashed for reference. The chat profile has four panels: (a) mean CPU %,
(b) server CPU per delivered message, (c) p99 delivery latency, (d) memory per connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from matplotlib.axes import Axes

# The object-oriented Figure renders PNG with Agg without pyplot, so no global backend
# switch and no display are needed (servers, CI).
from matplotlib.figure import Figure

from papaya_trio.bench.paper import PUBLISHED
from papaya_trio.bench.report import host_cv_by_connections
from papaya_trio.bench.runner import Point

Value = Callable[[Point], float | None]


def _by_mode(points: Sequence[Point]) -> dict[str, list[Point]]:
    """The points of each line: one per mode, or per mode and rate when rates differ."""
    several = len({p.rate for p in points}) > 1
    series: dict[str, list[Point]] = {}
    for point in sorted(points, key=lambda p: (p.rate or 0.0, p.connections)):
        name = f"{point.mode}, {point.rate:g} msg/s" if several else point.mode
        series.setdefault(name, []).append(point)
    return series


def _cpu_panel(axis: Axes, points: Sequence[Point]) -> None:
    """Mean CPU % per mode, with the spread of the repeats as error bars."""
    for mode, series in _by_mode(points).items():
        axis.errorbar(
            [p.connections for p in series],
            [p.cpu_percent for p in series],
            yerr=[
                [p.cpu_percent - p.cpu_percent_min for p in series],
                [p.cpu_percent_max - p.cpu_percent for p in series],
            ],
            marker="o",
            capsize=3,
            label=mode,
        )


def _value_panel(axis: Axes, points: Sequence[Point], value: Value) -> None:
    """One line per mode of `value`, skipping points that lack it."""
    for mode, series in _by_mode(points).items():
        pairs = [(p.connections, y) for p in series if (y := value(p)) is not None]
        axis.plot([x for x, _ in pairs], [y for _, y in pairs], marker="o", label=mode)


def _finish(axes: Sequence[Axes], ylabels: Sequence[str], counts: Sequence[int]) -> None:
    for index, (axis, ylabel) in enumerate(zip(axes, ylabels, strict=True)):
        axis.set_xscale("log", base=2)
        axis.set_xticks(counts, [str(n) for n in counts])
        axis.set_xlabel("concurrent connections")
        axis.set_ylabel(ylabel)
        axis.set_title(f"({'abcd'[index]})")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")


def plot(points: Sequence[Point], path: Path, title: str) -> None:
    """The paper profile's two-panel PNG, written to `path`."""
    counts = sorted({p.connections for p in points})
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    ax_cv, ax_cpu = figure.subplots(1, 2)
    _value_panel(ax_cv, points, lambda p: p.cv)
    _cpu_panel(ax_cpu, points)
    for name, published in PUBLISHED.items():
        xs = [n for n in counts if n in published]
        if xs:
            label = f"paper: {name}"
            ax_cv.plot(xs, [published[n].cv for n in xs], "x--", alpha=0.5, label=label)
            ax_cpu.plot(xs, [published[n].cpu_percent for n in xs], "x--", alpha=0.5, label=label)
    host = host_cv_by_connections(points)
    if host:
        xs = sorted(host)
        ax_cv.plot(xs, [host[n] for n in xs], ":", color="grey", label="host check (floor)")
    _finish((ax_cv, ax_cpu), ("coefficient of variation Cv", "mean CPU % (of one core)"), counts)
    figure.suptitle(title)
    figure.savefig(path, dpi=120)


def plot_chat(points: Sequence[Point], path: Path, title: str) -> None:
    """The chat profile's four-panel PNG, written to `path`."""
    counts = sorted({p.connections for p in points})
    figure = Figure(figsize=(11, 8), layout="constrained")
    (ax_cpu, ax_per), (ax_p99, ax_mem) = figure.subplots(2, 2)
    _cpu_panel(ax_cpu, points)
    _value_panel(ax_per, points, lambda p: p.figures.get("cpu_us_per_delivery"))
    _value_panel(ax_p99, points, lambda p: p.figures.get("latency_p99_ms"))
    _value_panel(ax_mem, points, lambda p: p.pss_per_connection_bytes / 1024)
    if any(p.figures.get("latency_p99_ms") for p in points):
        ax_p99.set_yscale("log")  # an idle room has no latency to scale
    _finish(
        (ax_cpu, ax_per, ax_p99, ax_mem),
        (
            "mean CPU % (of one core)",
            "server CPU µs per delivered message",
            "p99 delivery latency, ms",
            "PSS KiB per connection",
        ),
        counts,
    )
    figure.suptitle(title)
    figure.savefig(path, dpi=120)
