"""The harness itself: seeded scheduling, reproducible traces, the command line."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from trio._core import _run

from sim import invariants
from sim import sweep as sweep_module
from sim.__main__ import main, seed_range
from sim.clock import JumpClock
from sim.clock import check as check_clock
from sim.entropy import check as check_entropy
from sim.invariants import LIVENESS, SLOW_BOUND, Failure
from sim.runner import RunResult, run_seed
from sim.scheduler import check, sparse_io_polls
from sim.sweep import Job, Sweep, jobs_for
from sim.world import Components
from tests.sim.broken import OneReadPerWakeSession, SignalRoom

ROOT = Path(__file__).resolve().parents[2]


def test_scheduler_switch_still_works() -> None:
    check()


def test_jump_clock_keeps_mock_clock_time() -> None:
    check_clock()


def test_sparse_io_polls_still_hear_the_wakeup_socket() -> None:
    """A worker thread's result comes through trio's wake-up socket, the one thing the I/O
    poll is there for in a simulated run: with polls sparse it still arrives (a poll that
    never came back would hang here), and trio's own poll is back after the block."""
    trios_poll = _run.TheIOManager.get_events

    async def main() -> int:
        return await trio.to_thread.run_sync(lambda: 7)

    with sparse_io_polls(every=1000):
        assert _run.TheIOManager.get_events is not trios_poll
        assert trio.run(main, clock=JumpClock()) == 7
    assert _run.TheIOManager.get_events is trios_poll


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
    result, world = run_seed(3, "churn", components=components)  # a seed that catches it
    assert result.failure is not None
    trace = tmp_path / "trace.jsonl"
    world.trace.write(trace)
    report = result.report(trace)
    assert "\n" not in report
    assert "invariant=clients-reach-head" in report
    assert f"t={result.failure.time:.6f}s step={result.failure.step}" in report
    assert "replay: python -m sim --seed 3 --profile churn" in report
    assert '"kind":"failure"' in trace.read_text()


def _digests(out: str) -> dict[str, str]:
    """seed -> digest, from --verbose lines (which arrive in any order with several jobs)."""
    found = {}
    for line in out.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        found[f"{fields['profile']}-{fields['seed']}"] = fields["digest"]
    return found


def test_digests_do_not_depend_on_jobs(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--seeds", "0..3", "--profile", "smoke", "--verbose"]
    assert main([*args, "--jobs", "1"]) == 0
    alone = _digests(capsys.readouterr().out)
    assert main([*args, "--jobs", "2"]) == 0
    together = _digests(capsys.readouterr().out)
    assert len(alone) == 4
    assert together == alone


def test_all_profiles_seed_by_seed() -> None:
    assert jobs_for(("smoke", "swarm"), range(2)) == [
        Job("smoke", 0),
        Job("swarm", 0),
        Job("smoke", 1),
        Job("swarm", 1),
    ]


def _result(profile: str, seed: int, failure: Failure | None) -> RunResult:
    return RunResult(seed, profile, failure, "d", 30.0, 1.0, 10, 5, 1)


def test_summary_groups_failures_by_invariant() -> None:
    found = Sweep(wall=3.0)
    for result in (
        _result("crash", 4, Failure(LIVENESS, "head 9; not there: a", 1.0, 10)),
        _result("smoke", 1, None),
        _result("churn", 2, Failure(SLOW_BOUND, "b is 300 behind", 2.0, 20)),
        _result("churn", 1, Failure(LIVENESS, "head 3; not there: c", 3.0, 30)),
    ):
        found.results[(result.profile, result.seed)] = result
    lines = found.summary().splitlines()
    assert lines[:5] == [
        "clients-reach-head: 2 failed",
        "  python -m sim --seed 1 --profile churn    # head 3; not there: c",
        "  python -m sim --seed 4 --profile crash    # head 9; not there: a",
        "slow-client-isolated: 1 failed",
        "  python -m sim --seed 2 --profile churn    # b is 300 behind",
    ]
    assert lines[5].startswith("4 seeds, 3 failed in 3s; 80.0 seeds/minute")


def test_oracle_calls_no_server_code() -> None:
    """The checker states the server's promises itself: of the server's package it uses only
    the `Record` value type (see the docstring of sim.invariants)."""
    from_server = {
        name
        for name, value in vars(invariants).items()
        if getattr(value, "__module__", "").startswith("papaya_trio")
    }
    assert from_server == {"Record"}


def test_stop_on_failure_ends_the_sweep(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ran: list[Job] = []

    def fake_run(job: Job, trace_dir: Path) -> tuple[RunResult, Path | None]:
        ran.append(job)
        failure = Failure(LIVENESS, "behind", 1.0, 1) if job.seed == 1 else None
        return _result(job.profile, job.seed, failure), None

    monkeypatch.setattr(sweep_module, "run_job", fake_run)
    jobs = jobs_for(("smoke",), range(5))
    found = sweep_module.sweep(jobs, tmp_path, stop_on_failure=True, out=io.StringIO())
    assert ran == jobs[:2]
    assert [r.seed for r in found.failures] == [1]
    collected = sweep_module.sweep(jobs, tmp_path, out=io.StringIO())
    assert len(collected.results) == 5


def test_flood_links_carry_addresses_so_per_address_limits_apply() -> None:
    """The flood profile's flooders share 4 addresses the server sees (a stream's
    `peer_address`): admission's summary lines name them and count per-address refusals.
    Which limits one seed runs into depends on its schedule, so two seeds are run."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger, keep = logging.getLogger("papaya_trio.admission"), Keep()
    logger.addHandler(keep)
    try:
        for seed in (0, 1):
            result, _ = run_seed(seed, "flood")
            assert result.failure is None, result.report(None)
    finally:
        logger.removeHandler(keep)
    summaries = [line for line in lines if line.startswith("failed or refused connections")]
    assert summaries
    assert any("from 4 addresses, most from 10.66.0." in line for line in summaries)
    joined = " ".join(summaries)
    for limit in ("handshakes per address", "wrong-key limit", "handshake budget", "evicted"):
        assert limit in joined, joined


def test_link_bandwidth_holds_for_non_blocking_writes() -> None:
    """The fan-out fast path's writes (`send_nowait`) queue on the wire like blocking ones:
    ten 1,000-byte writes at once on a 1,000 B/s link arrive over ten seconds, not together,
    and a blocking write after them waits its turn."""
    from sim.network import Pipe

    arrivals: list[tuple[float, int]] = []

    async def main() -> None:
        import random

        pipe = Pipe(
            random.Random(0), latency=0.5, bandwidth=1000.0, capacity=64_000, max_chunk=64_000
        )
        for _ in range(10):
            assert pipe.send_nowait(b"x" * 1000) == 1000
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe.send, b"y" * 1000)
            got = 0
            while got < 11_000:
                data = await pipe.receive(64_000)
                got += len(data)
                arrivals.append((trio.current_time(), got))

    trio.run(main, clock=JumpClock())
    assert arrivals[0] == (pytest.approx(1.5), 1000)  # one second on the wire, then latency
    assert arrivals[-1] == (pytest.approx(11.5), 11_000)
    assert len(arrivals) == 11


def test_a_link_is_carrying_until_its_bytes_are_read() -> None:
    """The quiet window's check spares a client whose link still carries bytes to it, and
    only then: while a blocking write goes onto the wire, while bytes are in flight or unread,
    and no longer once the reader has taken them (a lost wake-up leaves the link idle)."""
    from sim.network import Pipe

    seen: list[tuple[str, bool]] = []

    async def main() -> None:
        import random

        pipe = Pipe(
            random.Random(0), latency=0.5, bandwidth=1000.0, capacity=64_000, max_chunk=64_000
        )
        seen.append(("idle", pipe.carrying))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe.send, b"x" * 1000)  # one second on the wire
            await trio.sleep(0.5)
            seen.append(("going onto the wire", pipe.carrying))
            await trio.sleep(0.75)
            seen.append(("in flight", pipe.carrying))
            await trio.sleep(1.0)
            seen.append(("arrived, unread", pipe.carrying))
            assert len(await pipe.receive(64_000)) == 1000
            seen.append(("read", pipe.carrying))

    trio.run(main, clock=JumpClock())
    assert seen == [
        ("idle", False),
        ("going onto the wire", True),
        ("in flight", True),
        ("arrived, unread", True),
        ("read", False),
    ]
