"""The bench command end to end: a short real sweep, and its option handling."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest

from papaya_trio.bench import command


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_are_the_papers_experiment() -> None:
    args = parse()
    assert args.profile == "paper"
    assert args.connections == (1, 2, 4, 8, 16, 32, 64)
    assert args.duration == 60.0
    assert args.modes == ("trio", "fork")
    assert args.rate_bits == 1e6


@pytest.mark.parametrize("bad", [["--connections", "0"], ["--modes", "threads"]])
def test_bad_options_are_refused(bad: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse(*bad)


def test_chat_profile_says_it_is_not_there_yet(capsys: pytest.CaptureFixture[str]) -> None:
    assert command.run(parse("--profile", "chat")) == 2
    assert "not available yet" in capsys.readouterr().err


def test_short_real_sweep_writes_json_csv_and_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse(
        "--connections=2",
        "--duration=2",
        "--warmup=0.5",
        "--modes=trio,fork",
        f"--output-dir={tmp_path}",
    )
    assert command.run(args) == 0
    table = capsys.readouterr().out
    assert "trio CPU %" in table and "fork CPU %" in table

    data = json.loads((tmp_path / "bench-paper.json").read_text())
    assert sorted(p["mode"] for p in data["points"]) == ["fork", "trio"]
    for trial in data["trials"]:
        assert trial["connections"] == 2
        assert len(trial["samples"]) == 4  # 2 s sampled every 0.5 s
        assert trial["cpu_percent"] > 0
        assert trial["load"]["bytes_sent"] > 0
    assert data["paper"]["C fork"]["64"]["cpu_percent"] == 14.70

    rows = list(csv.DictReader((tmp_path / "bench-paper.csv").read_text().splitlines()))
    assert sorted(r["mode"] for r in rows) == ["fork", "trio"]

    png = (tmp_path / "bench-paper.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 10_000
