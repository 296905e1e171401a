"""The Hypothesis-driven variant: workloads are generated operation lists, so a failure
shrinks to the shortest script that still breaks an invariant. Shrunk failures belong in
corpus.json (with their `ops`), which test_corpus replays."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sim.runner import run_seed
from sim.script import SCRIPT_CLIENTS, Op

ops = st.lists(
    st.builds(
        Op,
        kind=st.sampled_from(["send", "send", "send", "leave", "crash", "restart", "pause"]),
        client=st.integers(0, SCRIPT_CLIENTS - 1),
        arg=st.integers(0, 19),
    ),
    max_size=40,
)


@settings(max_examples=12)
@given(seed=st.integers(0, 2**32 - 1), script=ops)
def test_generated_scripts_keep_every_invariant(seed: int, script: list[Op]) -> None:
    result, _ = run_seed(seed, "script", ops=script)
    assert result.failure is None, f"{result.report(None)} ops={script}"
