"""The regression corpus: every seed or script that once broke an invariant is replayed.

Add an entry when a run fails: `{"profile": ..., "seed": ..., "note": ...}`, plus `"ops"`
(the JSON of `sim.script.ops_to_json`) for a shrunk Hypothesis script.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sim.runner import run_seed
from sim.script import ops_from_json

CORPUS = Path(__file__).with_name("corpus.json")
ENTRIES: list[dict[str, Any]] = json.loads(CORPUS.read_text())


@pytest.mark.parametrize("entry", ENTRIES, ids=[f"{e['profile']}-{e['seed']}" for e in ENTRIES])
def test_corpus_entry_passes(entry: dict[str, Any]) -> None:
    ops = ops_from_json(json.dumps(entry["ops"])) if "ops" in entry else None
    result, _ = run_seed(entry["seed"], entry["profile"], ops=ops)
    assert result.failure is None, f"{entry['note']}: {result.report(None)}"
