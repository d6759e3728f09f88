"""A learned list in an unmodified diffusers `StableDiffusionPipeline` through the DPM-Solver++ drop-in, against the
project's own sampler, side by side on `embedded-t2i` (issue 27, "Measure").

Both sides run the shipped `policies/embedded-t2i/dpmpp-2m-10.json` on the same held-out seed, prompts and initial
latents: the project's side is `load_model("embedded-t2i")` sampled by the core as `adaptive-sampler eval` samples it
(row policy `auto`, the VAE decoding in the CLI's fixed chunks); the drop-in's side is
`StableDiffusionPipeline.from_pretrained` on the same folder with `use_schedule(pipe, artifact)` and the project's
noise of each sample (seed, i) passed as `latents=`. Sample i is prompted with line i mod 10 of
`experiments/data/t2i_prompts.txt` ("a photo of a {class}", the ten Fashion-MNIST classes in turn) and its class
is i mod 10. One guidance scale for both (3.0, as the list was tuned and held out).

The batches alternate between the sides (which side goes first alternates too), so that the machine's noise falls
on both alike; each side's wall seconds (sampling and VAE decode, the pipeline's prompt encoding included, since it
does that per call; the project encodes the ten prompts once, timed apart) add up over the batches. Recorded: FID,
KID, precision and recall in the embedded feature space against the Fashion-MNIST test statistics (as `eval`
scores), label agreement by the embedded classifier, the largest |Δ| between the two sides' images, the wall times
and their ratio, and beside them the real-vs-real floor (the last n training images) and the VAE floor (the VAE's
reconstructions of those images), measured as `t2i_quality_table.py` measures them.

Resumable: each finished batch's images are kept under `runs/bench_dropin/` and its row in `--json`; the same
command continues after the last finished batch.

    OMP_NUM_THREADS=2 python experiments/bench_dropin.py
    python experiments/bench_dropin.py --markdown
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from harness import ROOT, environment, load_report, markdown_table, save_report, timed
from tqdm import tqdm
from train_t2i import reconstruct

from adaptive_sampler import use_schedule
from adaptive_sampler.atomic_write import atomic_write_bytes
from adaptive_sampler.cli.common import decode_rows, row_policy
from adaptive_sampler.datasets import load_fashion_mnist, to_model_range
from adaptive_sampler.errors import FieldError
from adaptive_sampler.metrics import score_images, score_samples
from adaptive_sampler.metrics.distribution import fid
from adaptive_sampler.metrics.feature_net import FEATURE_DIM
from adaptive_sampler.metrics.statistics import embedded_reference_statistics
from adaptive_sampler.models import embedded_t2i_dir, load_model
from adaptive_sampler.pipeline import Conditions, read_prompts
from adaptive_sampler.sampler import sample
from adaptive_sampler.schedules import ScheduleArtifact
from adaptive_sampler.seeding import draw_noise, sample_generator
from adaptive_sampler.solvers import make_solver

SCHEDULE = ROOT / "policies" / "embedded-t2i" / "dpmpp-2m-10.json"
PROMPTS = ROOT / "experiments" / "data" / "t2i_prompts.txt"
CACHE = ROOT / "runs" / "bench_dropin"
VAE_FLOOR = ROOT / "experiments" / "results" / "t2i_vae_floor.json"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="samples per side")
    p.add_argument("--seed", type=int, default=1_000_000, help="held-out seed (refused if the list was tuned on it)")
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--schedule", type=Path, default=SCHEDULE, help="a schedule artifact for embedded-t2i")
    p.add_argument("--prompts", type=Path, default=PROMPTS, help="sample i takes line i mod 10 (class i mod 10)")
    p.add_argument("--data", type=Path, default=None, help="folder with the four Fashion-MNIST idx files")
    p.add_argument("--json", type=Path, default=ROOT / "experiments" / "results" / "bench_dropin.json")
    p.add_argument("--restart", action="store_true", help="ignore the batches already in --json")
    p.add_argument("--markdown", action="store_true", help="print the table of --json and exit")
    return p.parse_args()


def markdown(path: Path) -> str:
    """The side-by-side table of a results file: the floors, the project's sampler, the drop-in in diffusers.

    Args:
        path: a bench_dropin.py results file.
    """
    data = json.loads(path.read_text())
    result, floors = data["result"], data["floors"]
    project, dropin = result["project"], result["dropin"]

    def quality(r: dict[str, Any]) -> list[str]:
        return [f"{r['fid']:.3f}" if "fid" in r else "n/a", f"{r['kid']:.4f}" if "kid" in r else "",
                f"{100 * r['label_agreement']:.2f} %" if "label_agreement" in r else ""]

    names = {"real_vs_real": "real vs real (last n training images)",
             "vae": "VAE floor (their reconstructions)",
             "real_vs_real_10k": "real vs real (10,000 vs 10,000, shipped statistics)"}
    rows = [[label, *quality(floors[key]), "", "", ""] for key, label in names.items() if key in floors]
    rows += [
        ["project sampler (`sample`, as `eval`)", *quality(project), f"{project['wall_s']:.1f}", "1.00", ""],
        ["`StableDiffusionPipeline` + DPM-Solver++ drop-in", *quality(dropin), f"{dropin['wall_s']:.1f}",
         f"{result['wall_ratio']:.2f}; {result['wall_ratio_median_batch']:.2f}", f"{result['max_abs_diff']:.1e}"],
    ]
    header = ["row", "FID", "KID", "label agreement", "wall s", "× project wall (sum; median batch)",
              "max \\|Δ\\| image"]
    return markdown_table(header, rows)


def tuning_seeds(artifact: ScheduleArtifact) -> set[int]:
    """The seeds the list was tuned on, from its provenance (`objective`: "... on tuning seeds A..B ...")."""
    match = re.search(r"tuning seeds (\d+)\.\.(\d+)", artifact.objective or "")
    return set(range(int(match[1]), int(match[2]) + 1)) if match else set()


def floors(args: argparse.Namespace, pipe: StableDiffusionPipeline, scores: Any) -> dict[str, Any]:
    """The real-vs-real floor (the last n training images against the test statistics, with their true labels) and
    the VAE floor (the VAE's reconstructions of the same images), measured here where the Fashion-MNIST files are;
    else both read from `t2i_vae_floor.json` (train_t2i.py's `floor` stage, the same definitions) for the same n.
    Beside them, always: the shipped training statistics (10,000 images) against the test statistics."""
    found: dict[str, Any] = {"real_vs_real_10k": {
        "fid": fid(embedded_reference_statistics("train"), embedded_reference_statistics("test")),
        "source": "the shipped training statistics vs the test statistics (10,000 images each)"}}
    try:
        train, train_labels = load_fashion_mnist("train", args.data)
    except (FieldError, OSError) as exc:
        recorded = json.loads(VAE_FLOOR.read_text())
        name = f"real-vs-real-train-last-{args.n}"
        if name not in recorded:
            print(f"no floors at n = {args.n}: Fashion-MNIST is not here ({exc}) and {VAE_FLOOR.name} has no {name}")
            return found
        where = f"{VAE_FLOOR.relative_to(ROOT)} (Fashion-MNIST is not on this machine)"
        return found | {
            "real_vs_real": {**recorded[name], "source": f"last {args.n} training images vs the test statistics, "
                                                         f"from {where}"},
            "vae": {**recorded[f"vae-recon-train-last-{args.n}"],
                    "source": f"VAE reconstructions of those images, from {where}"}}
    real = to_model_range(train[-args.n:])
    with torch.inference_mode():
        recon = reconstruct(pipe.vae, real)
    real_labels = [int(v) for v in train_labels[-args.n:]]
    return found | {
        "real_vs_real": scores(real, class_labels=real_labels) | {
            "source": f"last {args.n} Fashion-MNIST training images vs the test statistics, measured here"},
        "vae": scores(recon, class_labels=real_labels) | {
            "source": f"VAE reconstructions (posterior mean) of the last {args.n} training images, measured here"}}


def npy_bytes(*arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    return buffer.getvalue()


def main() -> None:
    args = parse_args()
    if args.markdown:
        print(markdown(args.json))
        return
    artifact = ScheduleArtifact.read(args.schedule)
    if args.seed in tuning_seeds(artifact):
        raise SystemExit(f"--seed: {args.seed} is one of the list's tuning seeds ({artifact.objective!r}); "
                         "use a held-out seed")
    prompts = read_prompts(args.prompts)
    if len(prompts) != 10:
        raise SystemExit(f"--prompts: {args.prompts} holds {len(prompts)} prompts, not the ten classes in order")
    folder = embedded_t2i_dir()
    torch.manual_seed(0)
    loaded = load_model("embedded-t2i").with_conditions(Conditions(prompts=prompts,
                                                                   guidance_scale=args.guidance_scale))
    cpu = torch.device("cpu")
    rows_policy = row_policy("auto", cpu)
    adapter = loaded.adapter(network_rows=rows_policy)
    solver = make_solver(artifact.solver)
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    call_kwargs = use_schedule(pipe, artifact)
    settings = {"n": args.n, "seed": args.seed, "guidance_scale": args.guidance_scale, "batch_size": args.batch_size,
                "schedule": str(args.schedule.resolve().relative_to(ROOT)) if args.schedule.resolve().is_relative_to(
                    ROOT) else str(args.schedule), "timesteps": list(artifact.timesteps), "solver": artifact.solver,
                "model": {"name": loaded.name, "weights_sha256": loaded.weights_sha256}, "prompts": list(prompts),
                "dropin": type(pipe.scheduler).__name__, "dropin_call": {k: v for k, v in call_kwargs.items()},
                "network_rows": "auto", "decode_rows": decode_rows(rows_policy)}
    report = load_report(args.json, {"settings": settings, "environment": environment("cpu"), "batches": []},
                         settings_key="settings", restart=args.restart)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    cache = CACHE / key
    shape = loaded.sample_shape

    def project_side(first: int, count: int) -> torch.Tensor:
        latents = sample(adapter, list(artifact.timesteps), shape, count, batch_size=count, seed=args.seed,
                         start=first, solver=solver, conditioning=loaded.conditioning).samples
        return loaded.decode(latents, decode_rows(rows_policy)).float()

    def dropin_side(first: int, count: int) -> torch.Tensor:
        indices = range(first, first + count)
        latents = draw_noise([sample_generator(args.seed, i) for i in indices], shape)
        with torch.inference_mode():
            out = pipe(prompt=[prompts[i % len(prompts)] for i in indices], guidance_scale=args.guidance_scale,
                       latents=latents, output_type="pt", **call_kwargs)
        return (out.images * 2 - 1).float()

    project_side(0, 2), dropin_side(0, 2)  # warm-up, untimed: first calls allocate and initialise
    done = {row["start"]: row for row in report["batches"] if (cache / f"{row['start']:07d}.npz").is_file()}
    report["batches"] = sorted(done.values(), key=lambda r: r["start"])
    starts = list(range(0, args.n, args.batch_size))
    for number, first in enumerate(tqdm(starts, desc="batches (both sides)", unit="batch")):
        if first in done:
            continue
        count = min(args.batch_size, args.n - first)
        if number % 2 == 0:  # alternate which side runs first
            ours, project_s = timed(cpu, project_side, first, count)
            theirs, dropin_s = timed(cpu, dropin_side, first, count)
        else:
            theirs, dropin_s = timed(cpu, dropin_side, first, count)
            ours, project_s = timed(cpu, project_side, first, count)
        atomic_write_bytes(cache / f"{first:07d}.npz", npy_bytes(ours.numpy(), theirs.numpy()))
        report["batches"].append({"start": first, "count": count, "project_s": project_s, "dropin_s": dropin_s,
                                  "first": "project" if number % 2 == 0 else "dropin",
                                  "max_abs_diff": float((ours - theirs).abs().max())})
        save_report(args.json, report)

    parts = [np.load(cache / f"{row['start']:07d}.npz") for row in report["batches"]]
    ours = torch.from_numpy(np.concatenate([p["arr_0"] for p in parts]))
    theirs = torch.from_numpy(np.concatenate([p["arr_1"] for p in parts]))
    labels = [i % len(prompts) for i in range(args.n)]

    def scores(images: torch.Tensor, wall_s: float | None = None, class_labels: list[int] | None = None
               ) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        if len(images) > FEATURE_DIM:  # FID needs n above the feature dimension (a smoke run's n is not)
            metrics = {k: v for k, v in asdict(score_samples(images)).items() if v is not None}
        if class_labels is not None:
            metrics |= score_images(images, "label", labels=class_labels)
        if wall_s is not None:
            metrics |= {"wall_s": wall_s, "samples_per_s": len(images) / wall_s}
        return metrics

    project_s = sum(row["project_s"] for row in report["batches"])
    dropin_s = sum(row["dropin_s"] for row in report["batches"])
    _, encode_s = timed(cpu, loaded.with_conditions, Conditions(prompts=prompts, guidance_scale=args.guidance_scale))
    report["result"] = {
        "project": scores(ours, project_s, labels), "dropin": scores(theirs, dropin_s, labels),
        "wall_ratio": dropin_s / project_s,
        "wall_ratio_median_batch": float(np.median([row["dropin_s"] / row["project_s"] for row in report["batches"]])),
        "max_abs_diff": float((ours - theirs).abs().max()),
        "project_prompt_encoding_s": encode_s,
        "artifact_heldout": {k: v for k, v in artifact.metrics.items() if k.startswith("heldout")},
    }
    report["floors"] = floors(args, pipe, scores)
    save_report(args.json, report)
    print(markdown(args.json))


if __name__ == "__main__":
    main()
