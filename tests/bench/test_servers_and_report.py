"""Server specs, trial ordering, and the table / CSV outputs (no processes started)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from papaya_trio.bench import runner, servers
from papaya_trio.bench.report import format_table, write_csv


def test_external_spec_substitutes_the_port() -> None:
    spec = servers.external_spec("csrv=./server -p {port} --quiet")
    assert spec.name == "csrv"
    assert spec.argv(7722) == ["./server", "-p", "7722", "--quiet"]


@pytest.mark.parametrize("definition", ["noequals", "=cmd {port}", "name=", "x=cmd 80"])
def test_external_spec_rejects_bad_definitions(definition: str) -> None:
    with pytest.raises(ValueError):
        servers.external_spec(definition)


def test_sink_spec_rejects_unknown_modes() -> None:
    with pytest.raises(ValueError, match="unknown sink mode"):
        servers.sink_spec("threads")


def test_modes_are_interleaved_and_rotated_per_repeat() -> None:
    config = runner.SweepConfig(
        servers=(servers.sink_spec("trio"), servers.sink_spec("fork")),
        connections=(1, 4),
        repeat=2,
    )
    order = [(n, r, s.name) for n, r, s in runner.trial_order(config)]
    assert order == [
        (1, 0, "trio"),
        (1, 0, "fork"),
        (1, 1, "fork"),
        (1, 1, "trio"),
        (4, 0, "trio"),
        (4, 0, "fork"),
        (4, 1, "fork"),
        (4, 1, "trio"),
    ]


def test_placement_separates_server_and_load_when_it_can() -> None:
    two = runner.Placement.choose([0, 1])
    assert two.pinned
    assert (two.server_cpus, two.load_cpus) == (frozenset({0}), frozenset({1}))
    one = runner.Placement.choose([3])
    assert not one.pinned


def point(mode: str, n: int, cpu: float, cv: float) -> runner.Point:
    return runner.Point(
        mode=mode,
        connections=n,
        repeats=1,
        cpu_percent=cpu,
        cpu_percent_min=cpu,
        cpu_percent_max=cpu,
        cv=cv,
        cv_max=cv,
        voluntary_per_second=0.0,
        involuntary_per_second=0.0,
        rss_bytes=0,
        pss_bytes=0,
        background_percent=0.0,
        load_cpu_percent=0.0,
        achieved_rate_bits=1e6,
        flagged=False,
    )


def test_table_puts_the_paper_beside_our_figures() -> None:
    table = format_table([point("trio", 64, 9.5, 0.05), point("fork", 64, 13.25, 0.04)])
    header, _rule, row = table.splitlines()
    assert "trio CPU %" in header and "paper C fork CPU %" in header
    assert row.split() == [
        "64",
        "9.50",
        "0.050",
        "13.25",
        "0.040",
        "14.70",
        "0.272",
        "36.08",
        "0.243",
    ]


def test_csv_has_one_row_per_point(tmp_path: Path) -> None:
    path = tmp_path / "points.csv"
    write_csv([point("trio", 1, 1.0, 0.1), point("fork", 1, 2.0, 0.2)], path)
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert [(r["mode"], r["cpu_percent"]) for r in rows] == [("trio", "1.0"), ("fork", "2.0")]
