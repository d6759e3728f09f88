"""Write the held-out scores of `bench_quality.py` into the embedded model's catalogue entries.

A catalogue entry carries the held-out FID/KID it was shipped with. When the model's sampling config changes
(clip_sample=False since 2026-12-01), the lists stay but their scores move: this copies each learned row of a
bench_quality results file (the same n = 2,000 held-out samples, seed 1000) into `metrics` of its entry and says so
in `method`. The lists themselves are not touched.

    python experiments/rescore_catalogue.py --json experiments/results/bench_quality.json --note "clip_sample=False"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adaptive_sampler.schedules.artifact import ScheduleArtifact
from adaptive_sampler.schedules.catalogue import catalogue_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True, help="bench_quality.py results")
    p.add_argument("--note", required=True, help="what changed, appended to each entry's method")
    args = p.parse_args()
    results = json.loads(args.json.read_text())
    for row in results["rows"].values():
        if row["kind"] != "learned":
            continue
        name = row["policy"].removeprefix("learned:")
        path = catalogue_dir() / f"{name}.json"
        artifact = ScheduleArtifact.model_validate_json(path.read_text())
        if [float(t) for t in artifact.timesteps] != [float(t) for t in row["timesteps"]]:
            raise SystemExit(f"{name}: the scored list {row['timesteps']} is not the entry's {artifact.timesteps}")
        old = artifact.metrics.get("heldout_fid")
        metrics = {**artifact.metrics, "heldout_fid": row["fid"], "heldout_kid": row["kid"],
                   "heldout_n": float(results["config"]["n"]), "heldout_seed": float(row["seed"])}
        method = f"{artifact.method}; held-out scores re-measured by experiments/bench_quality.py ({args.note})"
        artifact.model_copy(update={"metrics": metrics, "method": method}).save(path)
        print(f"{name}: held-out FID {old} -> {row['fid']:.4f}")


if __name__ == "__main__":
    main()
