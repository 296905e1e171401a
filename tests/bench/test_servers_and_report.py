"""Server specs, trial ordering, and the table / CSV outputs (no processes started)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from papaya_trio.bench import runner, servers
from papaya_trio.bench.report import (
    format_chat_table,
    format_table,
    highest_rate_sustained,
    highest_sustained,
    write_csv,
)
from papaya_trio.bench.workloads import ChatWorkload, PaperWorkload, SweepConfig


def test_external_spec_substitutes_the_port_and_the_room_folder() -> None:
    spec = servers.external_spec("csrv=./server -p {port} --dir {data_dir}")
    assert spec.name == "csrv"
    assert spec.argv(7722, Path("/r")) == ["./server", "-p", "7722", "--dir", "/r"]


def test_chat_spec_runs_the_real_server_on_loopback() -> None:
    argv = servers.chat_spec("fork", "never", 300).argv(0, Path("/room"))
    assert argv[1:6] == ["-m", "papaya_trio", "serve", "--mode", "fork"]
    for flag, value in [
        ("--listen", "127.0.0.1"),
        ("--data-dir", "/room"),
        ("--fsync", "never"),
        ("--max-connections", "300"),
    ]:
        assert argv[argv.index(flag) + 1] == value
    with pytest.raises(ValueError, match="unknown server mode"):
        servers.chat_spec("threads", "never", 1)


@pytest.mark.parametrize("definition", ["noequals", "=cmd {port}", "name=", "x=cmd 80"])
def test_external_spec_rejects_bad_definitions(definition: str) -> None:
    with pytest.raises(ValueError):
        servers.external_spec(definition)


def test_sink_spec_rejects_unknown_modes() -> None:
    with pytest.raises(ValueError, match="unknown sink mode"):
        servers.sink_spec("threads")


def test_modes_are_interleaved_and_rotated_per_repeat() -> None:
    config = SweepConfig(
        servers=(servers.sink_spec("trio"), servers.sink_spec("fork")),
        workload=PaperWorkload(),
        connections=(1, 4),
        repeat=2,
    )
    order = [(n, r, s.name) for rate, n, r, s in runner.trial_order(config) if rate is None]
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


def test_rates_are_the_outermost_loop_and_belong_to_the_chat_profile() -> None:
    two = (servers.chat_spec("trio", "never", 10), servers.chat_spec("fork", "never", 10))
    config = SweepConfig(two, ChatWorkload(), connections=(4, 8), rates=(10.0, 20.0))
    order = [(rate, n, s.name) for rate, n, _r, s in runner.trial_order(config)]
    assert order == [
        (rate, n, name) for rate in (10.0, 20.0) for n in (4, 8) for name in ("trio", "fork")
    ]
    workload = config.workload_at(20.0)
    assert isinstance(workload, ChatWorkload) and workload.rate == 20.0
    assert "--rate=20.0" in workload.generator_argv([1], 4, 1.0, Path("/room"))
    with pytest.raises(ValueError, match="chat profile"):
        SweepConfig((servers.sink_spec("trio"),), PaperWorkload(), rates=(10.0,))
    with pytest.raises(ValueError, match="each given once"):
        SweepConfig(two, ChatWorkload(), rates=(10.0, 10.0))
    with pytest.raises(ValueError, match="at most 32"):
        SweepConfig(two, ChatWorkload(), rates=tuple(float(r) for r in range(33)))


def test_placement_separates_server_and_load_when_it_can() -> None:
    two = runner.Placement.choose([0, 1])
    assert two.pinned
    assert (two.server_cpus, two.load_cpus) == (frozenset({0}), frozenset({1}))
    one = runner.Placement.choose([3])
    assert not one.pinned


def test_placement_gives_each_node_a_cpu_and_redis_its_own_where_there_is_one() -> None:
    one_node = runner.Placement.choose([0, 1], nodes=1, redis=True)
    assert one_node.node_cpus == (frozenset({0}),)
    assert one_node.redis_cpus == one_node.load_cpus == frozenset({1})  # no third CPU
    assert one_node.pinned
    two_nodes = runner.Placement.choose([0, 1], nodes=2, redis=True)
    assert two_nodes.node_cpus == (frozenset({0}), frozenset({1}))
    assert two_nodes.load_cpus == two_nodes.redis_cpus == frozenset({0, 1})  # they share
    assert not two_nodes.pinned
    four = runner.Placement.choose([0, 1, 2, 3], nodes=2, redis=True)
    assert (four.redis_cpus, four.load_cpus) == (frozenset({2}), frozenset({3}))
    assert four.server_cpus == frozenset({0, 1}) and four.pinned
    unpinned = runner.Placement.choose([0, 1], pin=False, nodes=2, redis=True)
    assert unpinned.node_cpus == (frozenset({0, 1}),) * 2


def point(
    mode: str,
    n: int,
    cpu: float,
    cv: float,
    figures: dict[str, float] | None = None,
    rate: float | None = None,
    cpu_quota: dict[str, object] | None = None,
) -> runner.Point:
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
        rss_per_connection_bytes=0.0,
        pss_per_connection_bytes=20 * 1024.0,
        background_percent=0.0,
        flagged=False,
        figures=figures or {},
        rate=rate,
        cpu_quota=cpu_quota or {},
    )


def test_table_puts_the_host_floor_and_the_paper_beside_our_figures() -> None:
    host = {"host_cv": 0.03}
    table = format_table([point("trio", 64, 9.5, 0.05, host), point("fork", 64, 13.25, 0.04, host)])
    header, _rule, row = table.splitlines()
    assert "host Cv" in header and "trio CPU %" in header and "paper C fork CPU %" in header
    assert row.split() == [
        "64",
        "0.030",
        "9.50",
        "0.050",
        "13.25",
        "0.040",
        "14.70",
        "0.272",
        "36.08",
        "0.243",
    ]


def test_csv_has_one_row_per_point_with_the_figures_as_columns(tmp_path: Path) -> None:
    path = tmp_path / "points.csv"
    write_csv([point("trio", 1, 1.0, 0.1, {"lost": 0.0}), point("fork", 1, 2.0, 0.2)], path)
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert [(r["mode"], r["cpu_percent"], r["lost"]) for r in rows] == [
        ("trio", "1.0", "0.0"),
        ("fork", "2.0", ""),
    ]


def chat_point(
    mode: str, n: int, sustained: bool, rate: float = 20.0, p99: float = 12.5
) -> runner.Point:
    figures = {
        "latency_p99_ms": p99,
        "lost": 0.0,
        "sustained": float(sustained),
        "rate_sustained": float(sustained and p99 <= 100),
        "deliveries_per_second": rate * n,
    }
    return point(mode, n, 10.0, 0.1, figures, rate)


def test_highest_sustained_is_the_largest_n_every_repeat_held() -> None:
    points = [
        chat_point("trio", 16, True),
        chat_point("trio", 256, True),
        chat_point("fork", 16, True),
        chat_point("fork", 256, False),
        chat_point("x", 16, False),
    ]
    assert highest_sustained(points) == {"trio": 256, "fork": 16, "x": 0}


def test_chat_table_has_a_row_per_point_and_the_summary() -> None:
    table = format_chat_table([chat_point("trio", 16, True), chat_point("fork", 16, False)])
    lines = table.splitlines()
    assert "p99 ms" in lines[0] and "PSS KiB/conn" in lines[0]
    trio_row = lines[2].split()
    assert trio_row[:4] == ["16", "20", "trio", "10.00"]
    assert "12.50" in trio_row and "20.0" in trio_row  # p99, KiB per connection
    assert lines[-1].endswith("trio 16, fork none")
    assert "highest rate" not in table and "throttled" not in table  # one rate, no quota


def test_highest_rate_sustained_is_the_highest_held_within_100_ms() -> None:
    points = [
        chat_point("one", 1000, True, rate=10.0, p99=40.0),
        chat_point("one", 1000, True, rate=20.0, p99=90.0),
        chat_point("one", 1000, True, rate=30.0, p99=450.0),  # delivered, but too late
        chat_point("two", 1000, True, rate=30.0, p99=60.0),
        chat_point("two", 1000, False, rate=40.0, p99=20.0),  # lost some
        chat_point("none", 1000, True, rate=10.0, p99=101.0),
    ]
    best = highest_rate_sustained(points)
    assert {setup: p.rate if p else None for setup, p in best.items()} == {
        ("one", 1000): 20.0,
        ("two", 1000): 30.0,
        ("none", 1000): None,
    }
    summary = format_chat_table(points).splitlines()[-1]
    assert summary == (
        "highest rate sustained (0 lost, no error, p99 <= 100 ms): one at N=1000 20 msg/s"
        " (20,000 deliveries/s), two at N=1000 30 msg/s (30,000 deliveries/s),"
        " none at N=1000 none"
    )


def test_chat_table_shows_the_node_cap_and_how_often_it_throttled() -> None:
    quota = {"fraction": 0.2, "period_us": 10000, "quota_us": 2000, "interface": "v1"}
    capped = point("trio-redis", 64, 19.5, 0.1, {"throttled_percent": 87.0}, 20.0, quota)
    table = format_chat_table([capped, chat_point("trio", 64, True)])
    header, _rule, *rows = table.splitlines()[:4]
    assert header.split()[-4:] == ["cap", "%", "throttled", "%"]
    by_mode = {row.split()[2]: row.split() for row in rows}
    assert by_mode["trio-redis"][-2:] == ["20", "87"]
    assert by_mode["trio"][-2:] == ["-", "-"]


def test_a_rate_counts_as_sustained_only_all_delivered_within_100_ms() -> None:
    load = {"requested_rate": 20, "achieved_rate": 20, "deliveries_per_second": 20_000}
    figures = ChatWorkload().figures({**load, "latency_p99_ms": 99.0}, 20.0, None)
    assert (figures["sustained"], figures["rate_sustained"]) == (1.0, 1.0)
    late = ChatWorkload().figures({**load, "latency_p99_ms": 101.0}, 20.0, None)
    assert (late["sustained"], late["rate_sustained"]) == (1.0, 0.0)
    lossy = ChatWorkload().figures({**load, "latency_p99_ms": 10.0, "lost": 3}, 20.0, None)
    assert lossy["rate_sustained"] == 0.0


async def test_a_setup_is_not_tried_above_two_rates_in_a_row_it_did_not_sustain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    specs = (servers.chat_spec("trio", "never", 10), servers.chat_spec("fork", "never", 10))
    rates = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0)
    config = SweepConfig(specs, ChatWorkload(), (4,), rates=rates, host_check=0)
    # trio sustains up to 20 msg/s but for a busy moment at 10; fork up to 30.
    held_rates = {"trio": (20.0,), "fork": (10.0, 20.0, 30.0)}

    async def fake_trial(
        spec: servers.ServerSpec, n: int, repeat: int, c: SweepConfig, p: object, rate: float
    ) -> runner.Trial:
        held = float(rate in held_rates[spec.name])
        figures = {"rate_sustained": held, "sustained": held, "latency_p99_ms": 1.0}
        return runner.Trial(
            spec.name, n, repeat, [1.0], 1.0, 0.0, 0.0, 0.0, 0, 0, 0.0, 0.0, 1, 0.0, {},
            figures, False, "", rate=rate,
        )  # fmt: skip

    monkeypatch.setattr(runner, "run_trial", fake_trial)
    result = await runner.run_sweep(config)
    ran = [(t.mode, t.rate) for t in result.trials]
    assert ran == [
        ("trio", 10.0), ("fork", 10.0), ("trio", 20.0), ("fork", 20.0),
        ("trio", 30.0), ("fork", 30.0), ("trio", 40.0), ("fork", 40.0), ("fork", 50.0),
    ]  # fmt: skip
    best = highest_rate_sustained(result.points())
    assert {setup: p.rate if p else None for setup, p in best.items()} == {
        ("trio", 4): 20.0,
        ("fork", 4): 30.0,
    }
