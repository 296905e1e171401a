"""A fixed set of seeds per profile: the real server must keep every invariant.

`make test` runs these; `python -m sim --seeds 0..100000 --profile NAME` is the long run.
"""

from __future__ import annotations

import pytest

from sim.runner import run_seed

# Seeds per profile, sized so the whole sim suite stays within about two minutes.
SEEDS = {"smoke": 10, "churn": 5, "slow-consumer": 3, "crash": 12, "shutdown": 8, "swarm": 20}


@pytest.mark.parametrize(
    ("profile", "seed"), [(name, seed) for name, count in SEEDS.items() for seed in range(count)]
)
def test_seed_keeps_every_invariant(profile: str, seed: int) -> None:
    result, _ = run_seed(seed, profile)
    assert result.failure is None, result.report(None)
    assert result.delivered > 0
