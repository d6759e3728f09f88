"""Should the embedded model's scheduler config keep `clip_sample=True`? The same n samples (seed 0, the quality
table's) with x̂0 clipping on and off, uniform DDIM (η = 0) at 10/20/50/100 steps. (The solvers' comparison, clipping
on and off, is bench_quality.py's table before and after the switch: experiments/results/bench_quality.clip_true.json
and bench_quality.json, the same seeds.)

Resumable: finished rows are kept in the JSON and skipped when the command is run again. Rows named in --import are
copied from another results file of the same protocol (per-sample bitwise determinism on CPU makes them the same
samples); ddim-10 and ddim-20 with clipping are recomputed here and agree with the quality table's to 1e-6.

    python experiments/clip_diagnosis.py --n 2000 --json experiments/results/clip_diagnosis.json \
        --import experiments/results/quality_table.clip_true.json:ddim-50,ddim-100
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from adaptive_sampler.metrics.evaluation import score_samples
from adaptive_sampler.model_adapter import ModelAdapter, X0Processing
from adaptive_sampler.models import load_model
from adaptive_sampler.policies import Uniform
from adaptive_sampler.sampler import sample

STEPS = (10, 20, 50, 100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=50)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--import", dest="imports", default=None,
                   help="FILE:ROW,ROW: clip=True DDIM rows (named ddim-N there) taken from FILE")
    args = p.parse_args()
    rows = json.loads(args.json.read_text()) if args.json.exists() else {}

    def record(name: str, row: dict) -> None:
        rows[name] = row
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"{name}: fid={row['fid']:.4g}, ci={row.get('fid_ci')}", flush=True)

    if args.imports:
        path, names = args.imports.split(":")
        source = json.loads(Path(path).read_text())
        for name in names.split(","):
            if f"{name} clip=True" not in rows:
                record(f"{name} clip=True", {**source[name], "imported_from": path})

    model = load_model("embedded")
    schedule = model.adapter().schedule
    for steps in STEPS:
        for clip in (True, False):
            name = f"ddim-{steps} clip={clip}"
            if name in rows:
                continue
            adapter = ModelAdapter(model.network, schedule, x0_processing=X0Processing(clip_sample=clip))
            start = time.perf_counter()
            result = sample(adapter, Uniform().timesteps(steps, schedule), model.sample_shape, args.n, seed=args.seed,
                            progress=True)
            metrics = {k: v for k, v in asdict(score_samples(result.samples, args.bootstrap, args.seed)).items()
                       if v is not None}
            record(name, {**metrics, "nfe": steps, "wall_s": time.perf_counter() - start,
                          "source": f"ddim, uniform {steps} steps, clip_sample={clip}, CPU, seed {args.seed}"})


if __name__ == "__main__":
    main()
