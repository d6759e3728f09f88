"""The shipping rule: a learned list stays in policies/ only if it beats every static rival of its solver and step
count (uniform, karras, trailing) on held-out seeds in *both* embedded feature spaces, the searched one and the
held-out one (experiments/bench_heldout_space.py, n = 2,000). The bench's row must be of the shipped list itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from adaptive_sampler.schedules.catalogue import load_entry

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results" / "bench_heldout_space.json"
sys.path.insert(0, str(ROOT / "experiments"))
from bench_heldout_space import RIVALS, learned_entries  # noqa: E402


@pytest.mark.parametrize("name", learned_entries())
def test_every_shipped_learned_list_beats_every_static_rival_in_both_spaces(name: str) -> None:
    report = json.loads(RESULTS.read_text())
    assert report["settings"]["n"] >= 2000
    rows = report["rows"]
    model, family = name.split("/")
    learned = rows.get(f"{name}/learned")
    assert learned is not None, f"{name} has not been scored: run experiments/bench_heldout_space.py"
    assert learned["timesteps"] == load_entry(name).timesteps, f"{name} changed since it was scored"
    for rival in RIVALS:
        theirs = rows[f"{model}/{family}/{rival}"]
        for space in ("searched", "heldout"):
            assert learned[f"{space}_fid"] < theirs[f"{space}_fid"], (name, rival, space)
