"""The sweep's outputs: text tables (the paper profile's beside the paper's figures), JSON
and CSV files."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

from papaya_trio.bench.paper import PUBLISHED
from papaya_trio.bench.runner import LOAD_AVERAGE, THROTTLED, Point, SweepResult
from papaya_trio.bench.steadiness import HOST_CV
from papaya_trio.bench.workloads import RATE_SUSTAINED_P99_MS

KIB = 1024


def _render(rows: Sequence[Sequence[str]]) -> str:
    """Right-aligned columns, a rule under the header row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cpu(point: Point) -> str:
    cpu = f"{point.cpu_percent:.2f}"
    if point.repeats > 1:
        cpu += f" ({point.cpu_percent_min:.2f}-{point.cpu_percent_max:.2f})"
    if point.flagged:
        cpu += " !"
    return cpu


def _cell(point: Point | None) -> tuple[str, str]:
    if point is None:
        return "-", "-"
    return _cpu(point), f"{point.cv:.3f}"


def format_table(points: Sequence[Point]) -> str:
    """The paper profile: one row per connection count, each mode's mean CPU % and Cv, then
    the paper's.

    CPU is % of one core; with repeats, the range of the repeats' means follows in
    parentheses. "!" marks a point with a flagged trial (see the JSON for the reason).
    "host Cv" is the Cv of the host checks run before that N's trials: the floor of theirs.
    """
    modes = list(dict.fromkeys(p.mode for p in points))
    by_key = {(p.mode, p.connections): p for p in points}
    counts = sorted({p.connections for p in points})
    host = host_cv_by_connections(points)
    header = ["N", "host Cv"]
    for mode in modes:
        header += [f"{mode} CPU %", f"{mode} Cv"]
    for name in PUBLISHED:
        header += [f"paper {name} CPU %", f"paper {name} Cv"]
    rows = [header]
    for n in counts:
        row = [str(n), f"{host[n]:.3f}" if n in host else "-"]
        for mode in modes:
            row += _cell(by_key.get((mode, n)))
        for published in PUBLISHED.values():
            point = published.get(n)
            row += [f"{point.cpu_percent:.2f}", f"{point.cv:.3f}"] if point else ["-", "-"]
        rows.append(row)
    return _render(rows)


def host_cv_by_connections(points: Sequence[Point]) -> dict[int, float]:
    """Per N, the Cv of the host checks before its trials (the same for every mode)."""
    return {p.connections: p.figures[HOST_CV] for p in points if HOST_CV in p.figures}


def _figure(point: Point, name: str, digits: int) -> str:
    value = point.figures.get(name)
    return "-" if value is None else f"{value:.{digits}f}"


CHAT_COLUMNS = (
    "N",
    "msg/s",
    "mode",
    "CPU %",
    "Cv",
    "deliveries/s",
    "CPU us/delivery",
    "p50 ms",
    "p99 ms",
    "max ms",
    "lost",
    "PSS KiB/conn",
    "RSS KiB/conn",
    "load CPU %",
    "host Cv",
    "load avg",
)


REDIS_CPU = "redis_cpu_percent"
REDIS_PER_DELIVERY = "redis_us_per_delivery"
#: Columns added when some server ran on Redis: Redis's own CPU, apart from the nodes'.
REDIS_COLUMNS = ("redis CPU %", "redis us/delivery")
#: Columns added when the nodes ran under a CPU quota: the cap, and how often it bit.
QUOTA_COLUMNS = ("node CPU cap %", "throttled %")


def format_chat_table(points: Sequence[Point]) -> str:
    """The chat profile: one row per (connections, rate, mode), then the highest N sustained
    and, with several rates, the highest rate each setup sustained.

    Latency is from the send to the receipt at each client; "lost" counts deliveries
    (messages x clients) that never arrived; memory is the growth of the server's processes
    per connection from before the clients connected. CPU is every node's together; where
    servers ran on Redis, Redis's CPU follows in columns of its own; where the nodes ran
    under a CPU quota, each node's cap (% of one CPU) and the share of its scheduling
    periods in which the cap stopped it.
    """
    redis = any(REDIS_CPU in point.figures for point in points)
    quota = any(point.cpu_quota for point in points)
    header = list(CHAT_COLUMNS) + (list(REDIS_COLUMNS) if redis else [])
    rows = [header + (list(QUOTA_COLUMNS) if quota else [])]
    for point in sorted(points, key=lambda p: (p.connections, p.rate or 0.0)):
        extra = [_figure(point, REDIS_CPU, 2), _figure(point, REDIS_PER_DELIVERY, 1)]
        fraction = point.cpu_quota.get("fraction")
        cap = f"{100 * fraction:g}" if isinstance(fraction, float) else "-"
        rows.append(
            [
                str(point.connections),
                "-" if point.rate is None else f"{point.rate:g}",
                point.mode,
                _cpu(point),
                f"{point.cv:.3f}",
                _figure(point, "deliveries_per_second", 0),
                _figure(point, "cpu_us_per_delivery", 1),
                _figure(point, "latency_p50_ms", 2),
                _figure(point, "latency_p99_ms", 2),
                _figure(point, "latency_max_ms", 1),
                _figure(point, "lost", 0),
                f"{point.pss_per_connection_bytes / KIB:.1f}",
                f"{point.rss_per_connection_bytes / KIB:.1f}",
                _figure(point, "load_cpu_percent", 1),
                _figure(point, HOST_CV, 3),
                _figure(point, LOAD_AVERAGE, 1),
                *(extra if redis else []),
                *([cap, _figure(point, THROTTLED, 0)] if quota else []),
            ]
        )
    sustained = highest_sustained(points)
    summary = ", ".join(f"{mode} {n if n else 'none'}" for mode, n in sustained.items())
    text = f"{_render(rows)}\n\nhighest N sustained (0 lost, no error, p99 <= 1 s): {summary}"
    if len({point.rate for point in points}) > 1:
        best = highest_rate_sustained(points)
        text += (
            f"\nhighest rate sustained (0 lost, no error, p99 <= {RATE_SUSTAINED_P99_MS:g} ms):"
            f" {', '.join(_rate_summary(setup, point) for setup, point in best.items())}"
        )
    return text


def _rate_summary(setup: tuple[str, int], point: Point | None) -> str:
    mode, connections = setup
    if point is None:
        return f"{mode} at N={connections} none"
    deliveries = point.figures.get("deliveries_per_second", 0.0)
    return f"{mode} at N={connections} {point.rate:g} msg/s ({deliveries:,.0f} deliveries/s)"


def highest_rate_sustained(points: Sequence[Point]) -> dict[tuple[str, int], Point | None]:
    """Per (mode, connections), the point of the highest rate whose every repeat delivered
    everything at the rate asked, without error, with a p99 within `RATE_SUSTAINED_P99_MS`
    (the ``rate_sustained`` figure; None when no rate was), in the points' order."""
    best: dict[tuple[str, int], Point | None] = {(p.mode, p.connections): None for p in points}
    for point in sorted(points, key=lambda p: p.rate or 0.0):
        setup = (point.mode, point.connections)
        ok = point.figures.get("rate_sustained") == 1.0
        best[setup] = point if ok else best.get(setup)
    return best


def highest_sustained(points: Sequence[Point]) -> dict[str, int]:
    """Per mode, the largest N whose every repeat was sustained (0 when none was)."""
    best: dict[str, int] = {}
    for point in points:
        ok = point.figures.get("sustained") == 1.0
        best[point.mode] = max(best.get(point.mode, 0), point.connections if ok else 0)
    return best


def write_json(result: SweepResult, path: Path, extra: dict[str, object]) -> None:
    """Every trial, the aggregated points and the conditions, plus `extra` entries."""
    data = {**result.to_json(), **extra}
    path.write_text(json.dumps(data, indent=2) + "\n")


def published_json() -> dict[str, object]:
    """The paper's published figures, for the paper profile's JSON."""
    return {
        name: {str(n): asdict(point) for n, point in series.items()}
        for name, series in PUBLISHED.items()
    }


def write_csv(points: Sequence[Point], path: Path) -> None:
    """One row per (mode, connections): every aggregated figure, one column each."""
    names = [f.name for f in fields(Point) if f.name != "figures"]
    figure_names = list(dict.fromkeys(name for p in points for name in p.figures))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names + figure_names, restval="")
        writer.writeheader()
        for point in points:
            row = {k: v for k, v in asdict(point).items() if k != "figures"}
            writer.writerow({**row, **point.figures})
