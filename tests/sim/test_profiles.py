"""A fixed set of seeds per profile: the real server must keep every invariant.

`make test` runs these; `python -m sim --seeds 0..100000 --profile NAME` is the long run.
"""

from __future__ import annotations

import pytest

from sim.runner import run_seed

# Seeds per profile, sized so the whole sim suite stays within about a minute (WebSocket
# clients roughly halved the seeds per minute; sim/README.md has the figures).
SEEDS = {"smoke": 5, "churn": 3, "slow-consumer": 2, "crash": 6, "shutdown": 5, "swarm": 10}
SEEDS["rate-limit"] = 2  # members past their rate: the server slows their reads (fakelag)
SEEDS["flood"] = 2  # keyless flooders against a handshake budget of 16; silent members
SEEDS["partition"] = 3  # clients cut off for up to 12 s, then healed


@pytest.mark.parametrize(
    ("profile", "seed"), [(name, seed) for name, count in SEEDS.items() for seed in range(count)]
)
def test_seed_keeps_every_invariant(profile: str, seed: int) -> None:
    result, _ = run_seed(seed, profile)
    assert result.failure is None, result.report(None)
    assert result.delivered > 0
