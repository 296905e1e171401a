"""The bench command end to end: a short real sweep, and its option handling."""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from papaya_trio.bench import command, cpuquota
from papaya_trio.bench.cgroup import Cgroup, unified_root
from papaya_trio.bench.workloads import ChatWorkload, PaperWorkload
from papaya_trio.cli import build_parser


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_are_the_papers_experiment() -> None:
    config = command._sweep_config(parse())
    assert isinstance(config.workload, PaperWorkload)
    assert config.connections == (1, 2, 4, 8, 16, 32, 64)
    assert config.duration == 60.0
    assert [s.name for s in config.servers] == ["trio", "trio-batched", "fork"]
    assert config.workload.rate_bits == 1e6
    assert parse().cpu_idle == "poll"
    assert config.host_check == 5.0


def test_chat_defaults_run_the_real_server_without_fsync() -> None:
    config = command._sweep_config(parse("--profile=chat"))
    assert config.workload == ChatWorkload(rate=20.0, senders=8, message_bytes=64)
    assert config.connections == (16, 64, 256, 1000)
    assert [s.name for s in config.servers] == ["trio", "fork"]
    argv = config.servers[0].argv(0, Path("/room"))
    assert argv[argv.index("--fsync") + 1] == "never"
    assert argv[argv.index("--max-connections") + 1] == str(1000 + 64)


def test_bad_counts_are_refused_by_the_parser() -> None:
    with pytest.raises(SystemExit):
        parse("--connections", "0")
    with pytest.raises(SystemExit):
        parse("--profile=chat", "--store", "sqlite")
    with pytest.raises(SystemExit):
        parse("--profile=chat", "--nodes", "0")
    with pytest.raises(SystemExit):
        parse("--profile=chat", "--nodes", "1,65")  # a process each: bounded


@pytest.mark.parametrize(
    ("options", "names"),
    [
        (["--nodes=2"], ["trio-redis-x2"]),  # several nodes: Redis, trio mode
        (["--store=redis"], ["trio-redis"]),  # fork mode keeps a file: left out
        (["--store=file,redis", "--modes=trio"], ["trio", "trio-redis"]),
        (["--nodes=1,2"], ["trio-redis", "trio-redis-x2"]),
        (["--store=file,redis", "--nodes=1,3"], ["trio", "trio-redis", "trio-redis-x3", "fork"]),
    ],
)
def test_stores_and_nodes_name_the_setups_that_can_run(
    options: list[str], names: list[str]
) -> None:
    config = command._sweep_config(parse("--profile=chat", "--fsync=always", *options))
    assert [s.name for s in config.servers] == names
    for spec in config.servers:
        argv = spec.argv(0, Path("/room"), "redis://127.0.0.1:7/0")
        on_redis = "redis" in spec.name
        assert ("redis://127.0.0.1:7/0" in argv) == on_redis
        assert spec.redis_appendfsync == ("always" if on_redis else None)
        assert spec.nodes == (int(spec.name[-1]) if "-x" in spec.name else 1)


@pytest.mark.parametrize(
    "bad",
    [
        ["--modes", "threads"],
        ["--profile=chat", "--modes", "trio-naive"],
        ["--connections", "5000"],  # beyond the paper generator's bound
        ["--host-check", "0.7"],  # not two 0.5 s sampling intervals
        ["--profile=chat", "--nodes=2", "--store=file"],  # nodes share a room through Redis
        ["--profile=chat", "--modes=fork", "--store=redis"],  # fork mode keeps a file
        ["--nodes=2"],  # the paper's sinks are one process
        ["--dialect=papaya"],  # the sinks speak no dialect
    ],
)
def test_bad_combinations_exit_with_2(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert command.run(parse(*bad)) == 2
    assert "papaya-trio bench:" in capsys.readouterr().err


def test_the_cli_has_the_bench_subcommand() -> None:
    args = build_parser().parse_args(["bench", "--profile=chat", "--rate=0"])
    assert (args.command, args.profile, args.rate) == ("bench", "chat", (0.0,))


def test_short_real_paper_sweep_writes_json_csv_and_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse(
        "--connections=2",
        "--duration=2",
        "--warmup=0.5",
        "--modes=trio,fork",
        "--cpu-idle=system",
        "--host-check=1",
        f"--output-dir={tmp_path}",
    )
    assert command.run(args) == 0
    out = capsys.readouterr()
    assert "trio CPU %" in out.out and "fork CPU %" in out.out and "host Cv" in out.out
    assert "idle CPUs: system" in out.err

    data = json.loads((tmp_path / "bench-paper.json").read_text())
    assert data["config"]["cpu_idle"] == "system"
    assert sorted(p["mode"] for p in data["points"]) == ["fork", "trio"]
    for trial in data["trials"]:
        assert trial["connections"] == 2
        assert len(trial["samples"]) == 4  # 2 s sampled every 0.5 s
        assert trial["cpu_percent"] > 0
        assert trial["load"]["bytes_sent"] > 0
    assert data["paper"]["C fork"]["64"]["cpu_percent"] == 14.70
    # One host check before the two modes' trials: 1 s sampled every 0.5 s.
    (host,) = data["host_checks"]
    assert (host["connections"], len(host["speeds"])) == (2, 2)
    assert all(trial["figures"]["host_cv"] == host["cv"] for trial in data["trials"])

    rows = list(csv.DictReader((tmp_path / "bench-paper.csv").read_text().splitlines()))
    assert sorted(r["mode"] for r in rows) == ["fork", "trio"]
    assert all(float(r["host_cv"]) == host["cv"] for r in rows)

    png = (tmp_path / "bench-paper.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 10_000


def chat_sweep(tmp_path: Path, *options: str) -> dict[str, Any]:
    """A short chat sweep of 3 clients; its JSON."""
    args = parse(
        "--profile=chat",
        "--connections=3",
        "--duration=1.5",
        "--warmup=0.5",
        "--rate=20",
        "--senders=2",
        "--cpu-idle=system",
        "--host-check=0",
        f"--output-dir={tmp_path}",
        *options,
    )
    assert command.run(args) == 0
    data: dict[str, Any] = json.loads((tmp_path / "bench-chat.json").read_text())
    assert data["failures"] == []
    for trial in data["trials"]:
        load = trial["load"]
        assert load["delivered"] == 3 * load["sent"] > 0  # every client got every message
        assert load["lost"] == 0 and load["errors"] == 0 and load["out_of_order"] == 0
        assert trial["figures"]["cpu_us_per_delivery"] > 0
        assert trial["figures"]["load_average"] >= 0  # how busy the machine was
    return data


def test_short_real_chat_sweep_loses_nothing_and_writes_json_csv_and_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = chat_sweep(tmp_path)
    out = capsys.readouterr().out
    assert "p99 ms" in out and "highest N sustained" in out and "load avg" in out
    assert "redis" not in out  # no Redis columns without Redis
    assert data["config"]["workload"]["profile"] == "chat"
    assert sorted(p["mode"] for p in data["points"]) == ["fork", "trio"]
    for trial in data["trials"]:
        load = trial["load"]
        assert load["connections"] == 3
        assert load["sent"] >= 0.95 * 20 * load["duration"]
        assert trial["figures"]["lost"] == 0
        assert 0 < trial["figures"]["latency_p50_ms"] <= trial["figures"]["latency_max_ms"]

    rows = list(csv.DictReader((tmp_path / "bench-chat.csv").read_text().splitlines()))
    assert sorted(r["mode"] for r in rows) == ["fork", "trio"]
    assert all(float(r["lost"]) == 0 and float(r["latency_p99_ms"]) > 0 for r in rows)

    png = (tmp_path / "bench-chat.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 10_000


def chat_servers_of(process: psutil.Process) -> list[psutil.Process]:
    found = []
    for child in process.children(recursive=True):
        try:
            if "serve" in child.cmdline():
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def wait_for_chat_server(bench: subprocess.Popen[bytes], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and bench.poll() is None:
        if servers := chat_servers_of(psutil.Process(bench.pid)):
            return servers
        time.sleep(0.05)
    raise AssertionError("the sweep's first server never started")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_stops_the_sweep_and_its_servers(
    tmp_path: Path, signum: signal.Signals
) -> None:
    options = ["--profile=chat", "--connections=2", "--duration=60", "--host-check=0"]
    bench = subprocess.Popen(
        [sys.executable, "-m", "papaya_trio.bench", *options, f"--output-dir={tmp_path}"],
        stderr=subprocess.PIPE,
    )
    servers = wait_for_chat_server(bench, timeout=60)
    bench.send_signal(signum)
    _out, err = bench.communicate(timeout=60)
    assert bench.returncode == 128 + signum
    assert f"{signum.name}: stopped" in err.decode() and "Traceback" not in err.decode()
    assert not any(server.is_running() for server in servers)
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    if (cgroups := unified_root()) is not None:  # and no cgroup left behind
        assert not list(cgroups.glob(f"papaya-bench-{bench.pid}-*"))


def test_one_and_two_nodes_on_redis_measure_nodes_and_redis_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = chat_sweep(tmp_path, "--nodes=1,2")
    out = capsys.readouterr().out
    assert "trio-redis-x2" in out and "redis CPU %" in out and "redis us/delivery" in out
    by_mode = {trial["mode"]: trial for trial in data["trials"]}
    assert sorted(by_mode) == ["trio-redis", "trio-redis-x2"]
    for mode, nodes in (("trio-redis", 1), ("trio-redis-x2", 2)):
        trial = by_mode[mode]
        assert trial["load"]["ports"] == nodes
        assert len(trial["placement"]["node_cpus"]) == nodes
        assert trial["figures"]["redis_cpu_percent"] > 0
        assert trial["figures"]["redis_us_per_delivery"] > 0


def test_papaya_dialect_measures_both_modes_and_a_daemonized_server(tmp_path: Path) -> None:
    here = Path(__file__).parent
    daemon = (
        f"daemon={sys.executable} {here / 'daemonize.py'} {sys.executable} -m papaya_trio serve"
        " --data-dir {data_dir} --listen 127.0.0.1 --tcp-port {port} --http-port 0"
        " --fsync never --max-connections-per-ip 0 --rate-messages 0"
    )
    data = chat_sweep(tmp_path, "--dialect=papaya", f"--external={daemon}")
    assert data["config"]["workload"]["dialect"] == "papaya"
    assert sorted(t["mode"] for t in data["trials"]) == ["daemon", "fork", "trio"]
    for trial in data["trials"]:
        assert trial["load"]["dialect"] == "papaya"
        assert trial["processes"] >= 1 and trial["rss_bytes"] > 0


@pytest.mark.parametrize(
    "bad",
    [
        ["--node-cpu", "0"],
        ["--node-cpu", "1.5"],
        ["--node-cpu", "nan"],
        ["--node-cpu", "a fifth"],
        ["--rate", "10,x"],
        ["--rate", "-1"],
        ["--rate", "nan"],
        ["--rate", "inf"],
        ["--rate", "10,10"],
        ["--rate", ",".join(str(r) for r in range(33))],  # bounded
    ],
)
def test_bad_quotas_and_rates_are_refused_by_the_parser(bad: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--profile=chat", *bad)


def test_rates_are_swept_lowest_first_and_the_quota_is_passed_on() -> None:
    config = command._sweep_config(parse("--profile=chat", "--rate=30,10,20", "--node-cpu=0.2"))
    assert config.rates == (10.0, 20.0, 30.0) and config.node_cpu == 0.2
    assert command.run(parse("--node-cpu=0.2")) == 2  # the paper profile has no nodes


def test_a_quota_that_cannot_be_set_is_refused_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # No cgroup v2 group, and the v1 cpu hierarchy pointed at a path where none can be made.
    monkeypatch.setattr(Cgroup, "create", classmethod(lambda cls, label: None))
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(cpuquota, "v1_cpu_root", lambda: tmp_path / "file" / "cpu")
    args = parse("--profile=chat", "--node-cpu=0.2", f"--output-dir={tmp_path / 'out'}")
    assert command.run(args) == 2
    err = capsys.readouterr().err
    assert "papaya-trio bench: cannot make a cgroup in" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing ran uncapped


def test_nodes_under_a_quota_are_capped_recorded_and_their_cgroups_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        cpuquota.check_available(cpuquota.CpuQuota.of(0.2), cpuquota.v1_cpu_root())
    except cpuquota.QuotaError as exc:
        pytest.skip(f"no CPU quota on this machine: {exc}")
    options = ("--store=file,redis", "--modes=trio", "--nodes=1,2", "--node-cpu=0.2")
    data = chat_sweep(tmp_path, *options, "--rate=10,20")
    out = capsys.readouterr()
    assert "node CPU quota: cgroup" in out.err
    assert "node CPU cap %" in out.out and "highest rate sustained" in out.out
    trials = {(t["mode"], t["rate"]): t for t in data["trials"]}
    setups = ("trio", "trio-redis", "trio-redis-x2")
    assert sorted(trials) == sorted((mode, rate) for mode in setups for rate in (10.0, 20.0))
    for (mode, _rate), trial in trials.items():
        quota = trial["cpu_quota"]
        assert (quota["fraction"], quota["period_us"], quota["quota_us"]) == (0.2, 10_000, 2_000)
        assert quota["interface"] in (cpuquota.V1, cpuquota.V2)
        assert "throttled_percent" in trial["figures"]
        nodes = 2 if mode.endswith("-x2") else 1
        assert trial["cpu_percent"] <= nodes * 20 * 1.25  # the kernel held each node to 20 %
    for root in (cpuquota.v1_cpu_root(), unified_root()):
        if root is not None:  # no quota or server cgroup of this process left behind
            assert not list(root.glob(f"papaya-bench-{os.getpid()}-*"))
