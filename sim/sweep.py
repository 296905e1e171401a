"""Sweeps: many (profile, seed) runs over every core, with progress and a grouped summary.

Theory of operation
-------------------
A run depends on nothing but its profile and seed (every random choice, the task order and
the WebSocket entropy come from the seed; the trace records no process-wide counters), so
the runs of a sweep are independent jobs. With `jobs == 1` they run one after the other in
this process; otherwise a pool of `jobs` worker processes (started with `spawn`, so no
worker inherits state from this one) takes them in order and this process collects the
results as they finish. Results arrive out of order, so everything a sweep reports about
the runs themselves (the summary, each result's digest) is keyed by (profile, seed), never
by arrival; only the progress line and the `--verbose` lines follow arrival order. A failing
run writes its trace file in the process that ran it (the trace is too big to send back).

`stop_on_failure` ends the sweep at the first failure that arrives: with several jobs, runs
already under way are abandoned, so which failure is "first" may depend on timing; the
failing run itself replays exactly from its line.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Generator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from sim.runner import RunResult, run_seed

PROGRESS_EVERY = 5.0  # wall seconds between progress lines when the output is not a terminal


@dataclass(frozen=True, slots=True)
class Job:
    """One run of a sweep."""

    profile: str
    seed: int


@dataclass(slots=True)
class Sweep:
    """What a sweep found, keyed by (profile, seed)."""

    results: dict[tuple[str, int], RunResult] = field(default_factory=dict)
    wall: float = 0.0

    @property
    def failures(self) -> list[RunResult]:
        """Failed runs, by profile and seed."""
        return [r for _, r in sorted(self.results.items()) if r.failure is not None]

    def summary(self) -> str:
        """Failures grouped by invariant (one replay line each), then the speed figures."""
        lines: list[str] = []
        groups: dict[str, list[RunResult]] = {}
        for result in self.failures:
            assert result.failure is not None
            groups.setdefault(result.failure.invariant, []).append(result)
        for invariant, results in sorted(groups.items()):
            lines.append(f"{invariant}: {len(results)} failed")
            for r in results:
                assert r.failure is not None
                lines.append(f"  {r.replay_command()}    # {r.failure.detail}")
        runs = len(self.results)
        sim_seconds = sum(r.sim_seconds for r in self.results.values())
        busy = sum(r.wall_seconds for r in self.results.values())
        lines.append(
            f"{runs} seeds, {len(self.failures)} failed in {self.wall:.0f}s; "
            f"{60 * runs / max(self.wall, 1e-9):.1f} seeds/minute "
            f"({60 * runs / max(busy, 1e-9):.1f} per core), "
            f"{sim_seconds / max(busy, 1e-9):.1f} simulated seconds per core-second"
        )
        return "\n".join(lines)


def jobs_for(profiles: Sequence[str], seeds: range) -> list[Job]:
    """Every profile for each seed, seed by seed (so early seeds of all profiles come first)."""
    return [Job(profile, seed) for seed in seeds for profile in profiles]


def run_job(job: Job, trace_dir: Path) -> tuple[RunResult, Path | None]:
    """Run one job; a failing run's trace goes to `trace_dir`."""
    result, world = run_seed(job.seed, job.profile)
    if result.failure is None:
        return result, None
    path = trace_dir / f"sim-{result.profile}-{job.seed}.jsonl"
    world.trace.write(path)
    return result, path


def _run_job_star(args: tuple[Job, Path]) -> tuple[RunResult, Path | None]:
    return run_job(*args)


def _results(
    jobs: list[Job], trace_dir: Path, workers: int
) -> Generator[tuple[RunResult, Path | None]]:
    if workers == 1:
        for job in jobs:
            yield run_job(job, trace_dir)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        # Ends the workers when the consumer stops early (stop on failure, Ctrl-C).
        yield from pool.imap_unordered(_run_job_star, [(job, trace_dir) for job in jobs])


class Progress:
    """A progress line on `out`: redrawn in place on a terminal, every few seconds otherwise."""

    def __init__(self, total: int, out: TextIO) -> None:
        self._total = total
        self._out = out
        self._tty = out.isatty()
        self._started = time.monotonic()
        self._shown = self._started

    def update(self, done: int, failed: int) -> None:
        now = time.monotonic()
        if not self._tty and now - self._shown < PROGRESS_EVERY and done < self._total:
            return
        self._shown = now
        rate = 60 * done / max(now - self._started, 1e-9)
        line = f"{done}/{self._total} seeds, {rate:.1f} seeds/min, {failed} failed"
        self._out.write(f"\r{line}\x1b[K" if self._tty else f"{line}\n")
        self._out.flush()

    def clear(self) -> None:
        if self._tty:
            self._out.write("\r\x1b[K")
            self._out.flush()


def sweep(
    jobs: list[Job],
    trace_dir: Path,
    *,
    workers: int = 1,
    stop_on_failure: bool = False,
    verbose: bool = False,
    out: TextIO | None = None,
    progress: TextIO | None = None,
) -> Sweep:
    """Run `jobs` on `workers` processes; print each failure (every run with `verbose`) to
    `out` (default: standard output) as it arrives, and a progress line to `progress`."""
    out = out or sys.stdout
    found = Sweep()
    bar = Progress(len(jobs), progress) if progress is not None else None
    started = time.monotonic()
    failed = 0
    with closing(_results(jobs, trace_dir, workers)) as results:
        for result, trace_path in results:
            found.results[(result.profile, result.seed)] = result
            failed += result.failure is not None
            if result.failure is not None or verbose:
                if bar is not None:
                    bar.clear()
                print(result.report(trace_path), file=out, flush=True)
            if bar is not None:
                bar.update(len(found.results), failed)
            if result.failure is not None and stop_on_failure:
                break
    if bar is not None:
        bar.clear()
    found.wall = time.monotonic() - started
    return found
