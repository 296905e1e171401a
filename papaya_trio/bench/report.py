"""The sweep's outputs: a text table beside the paper's figures, JSON and CSV files."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

from papaya_trio.bench.paper import PUBLISHED
from papaya_trio.bench.runner import Point, SweepResult


def _cell(point: Point | None) -> tuple[str, str]:
    if point is None:
        return "-", "-"
    cpu = f"{point.cpu_percent:.2f}"
    if point.repeats > 1:
        cpu += f" ({point.cpu_percent_min:.2f}-{point.cpu_percent_max:.2f})"
    if point.flagged:
        cpu += " !"
    return cpu, f"{point.cv:.3f}"


def format_table(points: Sequence[Point]) -> str:
    """One row per connection count: each mode's mean CPU % and Cv, then the paper's.

    CPU is % of one core; with repeats, the range of the repeats' means follows in
    parentheses. "!" marks a point with a flagged trial (see the JSON for the reason).
    """
    modes = list(dict.fromkeys(p.mode for p in points))
    by_key = {(p.mode, p.connections): p for p in points}
    counts = sorted({p.connections for p in points})
    header = ["N"]
    for mode in modes:
        header += [f"{mode} CPU %", f"{mode} Cv"]
    for name in PUBLISHED:
        header += [f"paper {name} CPU %", f"paper {name} Cv"]
    rows = [header]
    for n in counts:
        row = [str(n)]
        for mode in modes:
            row += _cell(by_key.get((mode, n)))
        for published in PUBLISHED.values():
            point = published.get(n)
            row += [f"{point.cpu_percent:.2f}", f"{point.cv:.3f}"] if point else ["-", "-"]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(result: SweepResult, path: Path) -> None:
    """Every trial, the aggregated points, the conditions and the paper's figures."""
    data = result.to_json()
    data["paper"] = {
        name: {str(n): asdict(point) for n, point in series.items()}
        for name, series in PUBLISHED.items()
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_csv(points: Sequence[Point], path: Path) -> None:
    """One row per (mode, connections) with every aggregated figure."""
    names = [f.name for f in fields(Point)]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for point in points:
            writer.writerow(asdict(point))
