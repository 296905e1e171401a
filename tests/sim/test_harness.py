"""The harness itself: seeded scheduling, reproducible traces, the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sim.__main__ import main, seed_range
from sim.entropy import check as check_entropy
from sim.runner import run_seed
from sim.scheduler import check
from sim.world import Components
from tests.sim.broken import OneReadPerWakeSession, SignalRoom

ROOT = Path(__file__).resolve().parents[2]


def test_scheduler_switch_still_works() -> None:
    check()


def test_websocket_entropy_is_seeded() -> None:
    check_entropy()


def test_same_seed_same_trace() -> None:
    first, _ = run_seed(7, "churn")
    again, _ = run_seed(7, "churn")
    other, _ = run_seed(8, "churn")
    assert first.failure is None
    assert first.digest == again.digest
    assert first.digest != other.digest


def test_trace_does_not_depend_on_hash_seed() -> None:
    digests = set()
    for hash_seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-m", "sim", "--seed", "3", "--profile", "crash", "--verbose"],
            cwd=ROOT,
            env={"PYTHONHASHSEED": hash_seed, "PATH": ""},
            capture_output=True,
            text=True,
            check=True,
        )
        digests.add(done.stdout.split("digest=")[1].split()[0])
    assert len(digests) == 1


def test_seed_ranges() -> None:
    assert seed_range("4") == range(4, 5)
    assert seed_range("0..9") == range(10)


def test_command_line_runs_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seeds", "0..1", "--profile", "smoke", "--verbose"]) == 0
    out = capsys.readouterr()
    assert out.out.count("ok seed=") == 2
    assert "seeds/minute" in out.err


def test_failure_report_is_one_line_with_replay_and_trace(tmp_path: Path) -> None:
    components = Components(room_class=SignalRoom, session_class=OneReadPerWakeSession)
    result, world = run_seed(2, "churn", components=components)
    assert result.failure is not None
    trace = tmp_path / "trace.jsonl"
    world.trace.write(trace)
    report = result.report(trace)
    assert "\n" not in report
    assert "invariant=clients-reach-head" in report
    assert f"t={result.failure.time:.6f}s step={result.failure.step}" in report
    assert "replay: python -m sim --seed 2 --profile churn" in report
    assert '"kind":"failure"' in trace.read_text()
