"""The embedded text-to-image model's quality table, with unmodified diffusers' StableDiffusionPipeline.

For each guidance scale (1, 3, 7.5) and each solver (DDIM 10/20/50, DPM-Solver++(2M) 10/20): FID against the
10,000 Fashion-MNIST test images in the embedded feature space, label agreement (the fraction of samples the
embedded classifier puts in the prompted class) and samples/s. Prompts are "a photo of a {class name}" with the
classes drawn uniformly (a seeded permutation of n // 10 of each). Beside them: the real-vs-real floor (the last n
training images) and the VAE floor (the VAE's reconstructions of those same images). Resumable: rows already in
`--json` are kept.

    OMP_NUM_THREADS=1 python experiments/t2i_quality_table.py --n 2000 --json experiments/results/t2i_quality_table.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline
from harness import load_report, markdown_table, save_report

from adaptive_sampler.datasets import load_fashion_mnist, to_model_range
from adaptive_sampler.metrics import load_embedded_feature_net, score_samples

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "adaptive_sampler" / "embedded" / "t2i"
CLASS_NAMES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a StableDiffusionPipeline folder")
    p.add_argument("--n", type=int, default=2000, help="samples per row (a multiple of 10)")
    p.add_argument("--guidance", default="1,3,7.5")
    p.add_argument("--solvers", default="ddim-10,ddim-20,ddim-50,dpmpp-10,dpmpp-20")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples for FID/KID intervals")
    p.add_argument("--data", type=Path, default=None, help="folder with the four Fashion-MNIST idx files")
    p.add_argument("--json", type=Path, default=Path("experiments/results/t2i_quality_table.json"))
    p.add_argument("--markdown", action="store_true", help="print the rows in --json as a Markdown table and exit")
    return p.parse_args()


def markdown(path: Path) -> str:
    """The table of a results file for the model card and the docs: floors first, then guidance x solver.

    Args:
        path: a t2i_quality_table.py results file.
    """
    rows: dict[str, dict] = json.loads(path.read_text())
    floor = rows.get("vae-floor", {}).get("fid")
    return markdown_table(
        ["row", "guidance", "NFE", "FID", "× VAE floor", "label agreement", "samples/s (1 thread)"],
        [[name, f"{r['guidance_scale']:g}" if "guidance_scale" in r else "", r["nfe"], f"{r['fid']:.2f}",
          f"{r['fid'] / floor:.2f}" if floor else "",
          f"{100 * r['label_agreement']:.1f} %" if "label_agreement" in r else "",
          f"{r['samples_per_s']:.1f}" if "samples_per_s" in r else ""] for name, r in rows.items()])


def prompt_labels(n: int, seed: int) -> torch.Tensor:
    """n class labels, n // 10 of each class, in a seeded random order."""
    labels = torch.arange(n) % len(CLASS_NAMES)
    return labels[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]


def label_agreement(images: torch.Tensor, labels: torch.Tensor) -> float:
    classifier = load_embedded_feature_net()
    with torch.inference_mode():
        predicted = torch.cat([classifier(images[i:i + 1000]).argmax(1) for i in range(0, len(images), 1000)])
    return float((predicted == labels).double().mean())


def set_solver(pipe: StableDiffusionPipeline, solver: str) -> int:
    """Put the named solver into the pipeline (from its own scheduler config); return its step count."""
    family, _, steps = solver.partition("-")
    if family == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    elif family == "dpmpp":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++",
                                                                 solver_order=2)
    else:
        raise SystemExit(f"--solvers: {solver!r} is not ddim-N or dpmpp-N")
    return int(steps)


def generate(pipe: StableDiffusionPipeline, labels: torch.Tensor, steps: int, guidance: float, seed: int,
             batch_size: int) -> torch.Tensor:
    """Images [n, 1, 32, 32] in [-1, 1]; sample i starts from its own generator (seed + i), whatever the batch."""
    parts = []
    for start in range(0, len(labels), batch_size):
        chunk = labels[start:start + batch_size].tolist()
        prompts = [f"a photo of a {CLASS_NAMES[c]}" for c in chunk]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators,
                   output_type="pt")
        parts.append(out.images * 2 - 1)
    return torch.cat(parts).float()


def main() -> None:
    args = parse_args()
    if args.markdown:
        print(markdown(args.json))
        return
    rows = load_report(args.json, {})

    def record(name: str, **row: object) -> None:
        rows[name] = row
        save_report(args.json, rows)
        print(f"{name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                                      if k in ("fid", "label_agreement", "samples_per_s", "nfe")), flush=True)

    def metrics(images: torch.Tensor) -> dict:
        return {k: v for k, v in asdict(score_samples(images, args.bootstrap, args.seed)).items() if v is not None}

    step_file = args.model / "training_step.json"  # written by train_t2i.py export: which checkpoint this is
    trained = json.loads(step_file.read_text()).get("t2i_step") if step_file.exists() else None
    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    if "real-vs-real" not in rows or "vae-floor" not in rows:
        train, _ = load_fashion_mnist("train", args.data)
        real = to_model_range(train[-args.n:])
        record("real-vs-real", **metrics(real), nfe=0, source=f"last {args.n} training images vs the test images")
        with torch.inference_mode():
            recon = torch.cat([pipe.vae.decode(pipe.vae.encode(real[i:i + 500]).latent_dist.mode()).sample
                               for i in range(0, len(real), 500)]).clamp(-1, 1)
        record("vae-floor", **metrics(recon), nfe=0,
               source=f"VAE reconstructions (posterior mean) of the last {args.n} training images")
    labels = prompt_labels(args.n, args.seed)
    for guidance in (float(g) for g in args.guidance.split(",")):
        for solver in args.solvers.split(","):
            name = f"{solver}-cfg{guidance:g}"
            if name in rows:
                continue
            steps = set_solver(pipe, solver)
            start = time.perf_counter()
            images = generate(pipe, labels, steps, guidance, args.seed, args.batch_size)
            wall = time.perf_counter() - start
            record(name, **metrics(images), label_agreement=label_agreement(images, labels),
                   nfe=steps * (2 if guidance > 1 else 1), samples_per_s=args.n / wall, wall_s=wall,
                   guidance_scale=guidance, steps=steps, solver=solver, threads=torch.get_num_threads(),
                   prompts="a photo of a {class name}, classes uniform", seed=args.seed, t2i_step=trained)


if __name__ == "__main__":
    main()
