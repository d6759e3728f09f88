"""Does the search's objective rank schedules the way the held-out score does? FID and KID on 512 samples (the
tuning objective's size) against FID on 2,000 held-out samples, for a few lists of one solver and budget.

Each list samples --n held-out images (seed 1000, bench_quality's seeds, so FID at n = 2,000 reproduces its rows);
FID and KID are then also computed on each disjoint 512-sample chunk of those images. If the 512-sample scores
order the lists as the 2,000-sample FID does, the tuning objective is only noisy; if they order them differently
chunk after chunk, FID at 512 samples is biased in a way that depends on the list, and a search that minimises it
optimises the bias.

    OMP_NUM_THREADS=1 python experiments/tuning_objective_diagnosis.py --solver unipc --steps 10 \\
        --lists uniform,karras,logsnr,999:860:754:542:373:282:106:23:3:0 \\
        --json experiments/results/objective_unipc-10.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scipy.stats import spearmanr

from adaptive_sampler import sample
from adaptive_sampler.metrics.evaluation import score_samples
from adaptive_sampler.models import load_model
from adaptive_sampler.policies import make_policy
from adaptive_sampler.solvers import make_solver

CHUNK = 512


def parse_list(text: str, steps: int, model) -> tuple[str, list[int]]:
    """A policy name or colon-separated timesteps."""
    if ":" in text:
        return "searched " + text, [int(t) for t in text.split(":")]
    return text, make_policy(text).timesteps(steps, model.adapter().schedule).tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--solver", default="unipc")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--lists", required=True, help="comma-separated policy names or colon-separated timesteps")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--json", type=Path, required=True, help="results (read to resume, rewritten per list)")
    args = p.parse_args()
    model = load_model("embedded")
    results = json.loads(args.json.read_text()) if args.json.exists() else {"rows": {}}
    results["config"] = {"solver": args.solver, "steps": args.steps, "n": args.n, "seed": args.seed, "chunk": CHUNK}
    for text in args.lists.split(","):
        label, timesteps = parse_list(text, args.steps, model)
        if label in results["rows"]:
            continue
        out = sample(model.adapter(), timesteps, model.sample_shape, args.n, batch_size=64, seed=args.seed,
                     solver=make_solver(args.solver), progress=True)
        full = score_samples(out.samples)
        chunks = [score_samples(out.samples[i:i + CHUNK]) for i in range(0, args.n - CHUNK + 1, CHUNK)]
        results["rows"][label] = {"timesteps": timesteps, "fid": full.fid, "kid": full.kid,
                                  "chunk_fid": [c.fid for c in chunks], "chunk_kid": [c.kid for c in chunks]}
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    rows = results["rows"]
    labels = list(rows)
    print(f"| list | FID n={args.n} | FID n={CHUNK}, per chunk | KID n={CHUNK}, per chunk |")
    print("|---|---|---|---|")
    for label in labels:
        r = rows[label]
        print(f"| {label} | {r['fid']:.2f} | " + " / ".join(f"{v:.2f}" for v in r["chunk_fid"]) + " | "
              + " / ".join(f"{v:.3f}" for v in r["chunk_kid"]) + " |")
    if len(labels) > 2:
        full = [rows[x]["fid"] for x in labels]
        for metric in ("chunk_fid", "chunk_kid"):
            rhos = [spearmanr(full, [rows[x][metric][c] for x in labels]).statistic
                    for c in range(len(rows[labels[0]][metric]))]
            print(f"Spearman rank correlation of {metric} with FID at n={args.n}, per chunk: "
                  + ", ".join(f"{rho:.2f}" for rho in rhos))


if __name__ == "__main__":
    main()
