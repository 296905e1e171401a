"""The figure in the paper's layout: (a) Cv against connections, (b) mean CPU % against
connections, one line per mode, with the paper's published series dashed for reference."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# The object-oriented Figure renders PNG with Agg without pyplot, so no global backend
# switch and no display are needed (servers, CI).
from matplotlib.figure import Figure

from papaya_trio.bench.paper import PUBLISHED
from papaya_trio.bench.runner import Point


def plot(points: Sequence[Point], path: Path, title: str) -> None:
    """Write the two-panel PNG to `path`."""
    modes = list(dict.fromkeys(p.mode for p in points))
    counts = sorted({p.connections for p in points})
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    ax_cv, ax_cpu = figure.subplots(1, 2)
    for mode in modes:
        series = sorted((p for p in points if p.mode == mode), key=lambda p: p.connections)
        xs = [p.connections for p in series]
        ax_cv.plot(xs, [p.cv for p in series], marker="o", label=mode)
        ax_cpu.errorbar(
            xs,
            [p.cpu_percent for p in series],
            yerr=[
                [p.cpu_percent - p.cpu_percent_min for p in series],
                [p.cpu_percent_max - p.cpu_percent for p in series],
            ],
            marker="o",
            capsize=3,
            label=mode,
        )
    for name, published in PUBLISHED.items():
        xs = [n for n in counts if n in published]
        if xs:
            label = f"paper: {name}"
            ax_cv.plot(xs, [published[n].cv for n in xs], "x--", alpha=0.5, label=label)
            ax_cpu.plot(xs, [published[n].cpu_percent for n in xs], "x--", alpha=0.5, label=label)
    for axis, letter, ylabel in (
        (ax_cv, "a", "coefficient of variation Cv"),
        (ax_cpu, "b", "mean CPU % (of one core)"),
    ):
        axis.set_xscale("log", base=2)
        axis.set_xticks(counts, [str(n) for n in counts])
        axis.set_xlabel("concurrent connections")
        axis.set_ylabel(ylabel)
        axis.set_title(f"({letter})")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.suptitle(title)
    figure.savefig(path, dpi=120)
