"""The embedded model's quality table: real-vs-real floor, DDPM-1000, DDIM (η = 0, uniform) at 100/50/20/10/5 steps.

Resumable: finished rows are kept in the JSON and skipped when the command is run again.

    python experiments/quality_table.py --n 2000 --json experiments/results/quality_table.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from harness import load_report, markdown_table, save_report

from adaptive_sampler.datasets import load_fashion_mnist, to_model_range
from adaptive_sampler.metrics import embedded_reference_statistics, fid
from adaptive_sampler.metrics.evaluation import score_samples
from adaptive_sampler.models import load_model
from adaptive_sampler.policies import Uniform
from adaptive_sampler.sampler import sample

DDPM_SAMPLES = Path(__file__).parent / "data" / "ddpm1000_seed0.npy"


def markdown(path: Path) -> str:
    """The quality table of a results file, with each FID as a multiple of the real-vs-real floor.

    Args:
        path: a quality_table.py results file.
    """
    rows = json.loads(path.read_text())
    floor = rows["real-vs-real"]["fid"]
    labels = {"real-vs-real": "real vs real (2,000 training images)",
              "ddpm-1000": "DDPM ancestral, 1000 steps (H200, clip_sample=True)"}
    ddim = sorted((k for k in rows if k.startswith("ddim-")), key=lambda k: -rows[k]["nfe"])
    cells = []
    for key in [k for k in labels if k in rows] + ddim:
        row, ci = rows[key], rows[key].get("fid_ci") or {}
        interval = f" [{ci['low']:.2f}, {ci['high']:.2f}]" if ci else ""
        cells.append([labels.get(key, f"DDIM η=0 uniform, {row['nfe']} steps"), row["nfe"],
                      f"{row['fid']:.2f}{interval}", f"{row['fid'] / floor:.1f}", f"{row['kid']:.3f}",
                      f"{row['precision']:.3f}", f"{row['recall']:.3f}"])
    return markdown_table(["row", "NFE", "FID (95 % bootstrap)", "× floor", "KID", "precision", "recall"], cells)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", default="100,50,20,10,5")
    p.add_argument("--bootstrap", type=int, default=50)
    p.add_argument("--data", type=Path, default=None, help="folder with the Fashion-MNIST idx files")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--markdown", action="store_true", help="print the README table of --json and exit")
    args = p.parse_args()
    if args.markdown:
        print(markdown(args.json))
        return
    rows = load_report(args.json, {})

    def record(name: str, **row: object) -> None:
        rows[name] = row
        save_report(args.json, rows)
        print(f"{name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                                      if k in ("fid", "kid", "precision", "recall", "nfe", "wall_s")), flush=True)

    def metrics(samples: torch.Tensor) -> dict:
        return {k: v for k, v in asdict(score_samples(samples, args.bootstrap, args.seed)).items() if v is not None}

    if "real-vs-real" not in rows:
        train, _ = load_fashion_mnist("train", args.data)
        # n held-out training images against the test statistics: the floor at this n (FID is biased upward at
        # finite n); the 10k-vs-10k floor is listed beside it.
        subset = to_model_range(train[-args.n:])
        floor_10k = fid(embedded_reference_statistics("train"), embedded_reference_statistics("test"))
        record("real-vs-real", **metrics(subset), nfe=0, fid_10k_vs_10k=floor_10k,
               source=f"last {args.n} Fashion-MNIST training images vs the 10,000 test images")
    if "ddpm-1000" not in rows and DDPM_SAMPLES.exists():
        samples = torch.from_numpy(np.load(DDPM_SAMPLES))[: args.n]
        record("ddpm-1000", **metrics(samples), nfe=1000,
               source="diffusers DDPMScheduler ancestral sampling, all 1000 steps, on an NVIDIA H200 "
                      "(experiments/sample_ddpm.py, seed 0)")
    loaded = load_model("embedded")
    adapter = loaded.adapter()
    for steps in (int(s) for s in args.steps.split(",")):
        name = f"ddim-{steps}"
        if name in rows:
            continue
        start = time.perf_counter()
        result = sample(adapter, Uniform().timesteps(steps, adapter.schedule), loaded.sample_shape, args.n,
                        batch_size=64, seed=args.seed, progress=True)
        record(name, **metrics(result.samples), nfe=steps, wall_s=time.perf_counter() - start,
               source=f"DDIM eta=0, uniform (linspace) {steps} steps, CPU, seed {args.seed}")


if __name__ == "__main__":
    main()
