"""Choose the finishing tail of early-exited samples (issue 15): K in {1, 2, 3} and the tail's spacing, by FID.

On the embedded model, uniform DDIM with `--steps` steps (η = 0) and the calibrated x0-l2 monitor (the package
default for that step count), n samples of one seed, side by side in one run:
  - the full run (no monitor),
  - `finish=x0` (the exited sample returns x̂0 of its exit step),
  - `finish=tail:K:SPACING` for K in --tails and SPACING in logsnr and t (K more DDIM steps to t = 0, in NFE),
  - uniform DDIM at the mean NFE of the best tail row, rounded (the competitor that needs no monitor).
Per row: mean NFE, FID/KID in the embedded feature space (score_samples), PSNR to the full run, wall time. Rows are
written to the JSON as they finish and reused when the same command runs again (`--restart` discards them).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/choose_finish_tail.py \\
        --json experiments/results/choose_finish_tail.json --n 256
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from adaptive_sampler import load_model, sample
from adaptive_sampler.metrics import fidelity
from adaptive_sampler.metrics.evaluation import score_samples
from adaptive_sampler.monitors import monitor_from_spec
from adaptive_sampler.policies.builtin import Uniform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--monitor", default="x0-l2", help="a spec; without a threshold: the calibrated default")
    parser.add_argument("--tails", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--restart", action="store_true")
    args = parser.parse_args()

    model = load_model("embedded")
    adapter, shape = model.adapter(), model.sample_shape
    timesteps = Uniform().timesteps(args.steps, adapter.schedule)
    config = {"n": args.n, "steps": args.steps, "seed": args.seed, "monitor": args.monitor,
              "batch_size": args.batch_size}
    data: dict[str, Any] = {}
    if args.json.is_file() and not args.restart:
        data = json.loads(args.json.read_text())
        if data.get("config") != config:
            parser.error(f"{args.json} holds another configuration ({data.get('config')}); use --restart")
    data.update(config=config, command="OMP_NUM_THREADS=1 " + " ".join([Path(sys.executable).name, *sys.argv]),
                threads=torch.get_num_threads())
    rows: dict[str, Any] = data.setdefault("rows", {})
    full_file = args.json.with_name(args.json.stem + ".full.safetensors")  # kept for a resumed run

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")

    def run(name: str, plan: Any = timesteps, finish: str | None = None, monitored: bool = True) -> None:
        if name in rows and (name != "full" or full_file.is_file()):
            return
        monitor = monitor_from_spec(args.monitor, model=model.name, num_steps=args.steps) if monitored else None
        start = time.perf_counter()
        result = sample(adapter, plan, shape, args.n, batch_size=args.batch_size, seed=args.seed, monitor=monitor,
                        finish=finish)
        wall = time.perf_counter() - start
        if name == "full":
            save_file({"samples": result.samples.contiguous()}, str(full_file))
        full = load_file(str(full_file))["samples"]
        metrics = score_samples(result.samples)
        rows[name] = {"finish": finish, "monitor": monitor.spec() if monitor else None, "nfe": result.nfe_mean,
                      "fid": metrics.fid, "kid": metrics.kid, "psnr_to_full": fidelity(result.samples, full).psnr,
                      "wall_s": wall}
        save()
        print(f"{name:>18}: NFE {result.nfe_mean:6.2f}  FID {metrics.fid:7.3f}  KID {metrics.kid:.4f}  "
              f"PSNR {rows[name]['psnr_to_full']:6.2f}  {wall:6.1f} s", flush=True)

    run("full", monitored=False)
    run("x0", finish="x0")
    for k in args.tails:
        for spacing in ("logsnr", "t"):
            run(f"tail:{k}:{spacing}", finish=f"tail:{k}:{spacing}")
    tails = {name: row for name, row in rows.items() if name.startswith("tail:")}
    best = min(tails, key=lambda name: tails[name]["fid"])
    static = round(tails[best]["nfe"])
    run(f"ddim-{static}", plan=Uniform().timesteps(static, adapter.schedule), monitored=False)
    data["best_tail"] = best
    save()
    full_fid = rows["full"]["fid"]
    for name, row in rows.items():
        print(f"{name:>18}: NFE {row['nfe']:6.2f}  FID {row['fid']:7.3f} ({row['fid'] / full_fid - 1:+.1%} vs full)"
              f"  PSNR {row['psnr_to_full']:6.2f}")
    print(f"best tail by FID: {best}")


if __name__ == "__main__":
    main()
