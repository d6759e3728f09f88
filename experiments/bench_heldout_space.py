"""Every shipped learned list against the static rivals of its solver and step count, scored in both embedded feature
spaces: the searched one (which tuning objectives use) and the held-out one (another classifier, which no search or
calibration has seen). A ranking the two spaces disagree on is marked.

For each catalogue entry of the chosen models (`fashion-mnist`, the embedded pixel DDPM, unconditional; and
`embedded-t2i` at guidance 3 with the ten "a photo of a {class}" prompts, sample i taking class i mod 10), it samples
n held-out samples (--seed; the pixel lists were tuned on seeds 0-1, the t2i ones on seeds 0-7) with the entry and
with uniform, karras and trailing, and scores each set with FID and KID in both spaces, plus label agreement by both
classifiers for the t2i model. The rivals run once per (model, solver, steps). Resumable: rows in --json are kept.

    python experiments/bench_heldout_space.py --json experiments/results/bench_heldout_space.json     # ~1.5 h, CPU
    python experiments/bench_heldout_space.py --entries fashion-mnist/unipc-5 --n 200 --json /tmp/h.json  # smoke
    python experiments/bench_heldout_space.py --markdown experiments/results/bench_heldout_space.json
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from harness import environment, load_report, markdown_table, save_report
from tqdm.auto import tqdm

from adaptive_sampler.metrics.evaluation import score_samples
from adaptive_sampler.metrics.scoring import score_images
from adaptive_sampler.models import load_model
from adaptive_sampler.pipeline import Conditions, read_prompts
from adaptive_sampler.policies import make_policy
from adaptive_sampler.sampler import sample
from adaptive_sampler.schedules.catalogue import list_entries, load_entry
from adaptive_sampler.solvers import make_solver

RIVALS = ("uniform", "karras", "trailing")
# the project's own learned lists (sd15/ and sdxl/ hold the published AYS tables), the t2i ones first
SCORED_MODELS = ("embedded-t2i", "fashion-mnist")
MODEL_SPEC = {"embedded-t2i": "embedded-t2i", "fashion-mnist": "embedded"}  # catalogue folder -> load_model name
PROMPTS = Path(__file__).resolve().parent / "data" / "t2i_prompts.txt"
T2I_GUIDANCE = 3.0


def learned_entries() -> list[str]:
    """Every shipped learned list of the embedded models, the t2i ones first, then by step count."""
    names = [name for name in list_entries() if name.split("/")[0] in SCORED_MODELS]
    return sorted(names, key=lambda name: (SCORED_MODELS.index(name.split("/")[0]), -int(name.rsplit("-", 1)[1]),
                                           name))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--entries", default=None, help="catalogue entries, comma-separated (default: every learned list "
                                                   "of the embedded models)")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--data", type=Path, default=None, help="folder with the Fashion-MNIST idx files (the floors)")
    p.add_argument("--markdown", action="store_true", help="print the table of --json and exit")
    return p.parse_args()


def scores(images: torch.Tensor, labels: list[int] | None) -> dict[str, float]:
    """FID and KID in both spaces; label agreement by both classifiers where samples have a class."""
    out: dict[str, float] = {}
    for space in ("searched", "heldout"):
        metrics = asdict(score_samples(images, space=space))
        out |= {f"{space}_fid": metrics["fid"], f"{space}_kid": metrics["kid"]}
        if labels is not None:
            spec = "label" if space == "searched" else "label:heldout"
            out[f"{space}_label"] = score_images(images, spec, labels=labels)["label_agreement"]
    return out


def draw(model_name: str, solver: str, timesteps: list[int], n: int, seed: int, batch_size: int) -> torch.Tensor:
    loaded = load_model(MODEL_SPEC[model_name])
    if model_name == "embedded-t2i":
        loaded = loaded.with_conditions(Conditions(prompts=read_prompts(PROMPTS), guidance_scale=T2I_GUIDANCE))
    adapter = loaded.adapter()
    result = sample(adapter, timesteps, loaded.sample_shape, n, batch_size=batch_size, seed=seed,
                    solver=make_solver(solver), conditioning=loaded.conditioning, progress=True)
    return loaded.decode(result.samples, 8).float().clamp(-1, 1)


def floors(n: int, data: Path | None) -> dict[str, dict[str, float]]:
    """The real-vs-real floor (the last n training images, with their true labels) and the VAE floor (embedded-t2i's
    VAE reconstructions of the same images), in both spaces."""
    from diffusers import AutoencoderKL
    from train_t2i import reconstruct

    from adaptive_sampler.datasets import load_fashion_mnist, to_model_range
    from adaptive_sampler.models import embedded_t2i_dir

    images, labels = load_fashion_mnist("train", data)
    real = to_model_range(images[-n:])
    vae = AutoencoderKL.from_pretrained(embedded_t2i_dir() / "vae", local_files_only=True).eval()
    with torch.inference_mode():
        recon = reconstruct(vae, real)
    true = [int(v) for v in labels[-n:]]
    return {"real": scores(real, true), "vae": scores(recon, true)}


def main() -> None:
    args = parse_args()
    if args.markdown:
        print(markdown(args.json))
        return
    settings = {"n": args.n, "seed": args.seed, "rivals": list(RIVALS), "t2i_guidance": T2I_GUIDANCE}
    report = load_report(args.json, {"settings": settings, "environment": environment(),
                                     "rows": {}}, settings_key="settings")
    if "floors" not in report:
        report["floors"] = floors(args.n, args.data)
        save_report(args.json, report)
    entries = args.entries.split(",") if args.entries else learned_entries()
    for name in tqdm(entries, desc="entries"):
        model_name, family = name.split("/")
        solver, _, steps_text = family.rpartition("-")
        entry = load_entry(name, int(steps_text))
        schedule = load_model(MODEL_SPEC[model_name]).adapter().schedule
        lists = {"learned": list(entry.timesteps)} | {
            rival: make_policy(rival).timesteps(int(steps_text), schedule).tolist() for rival in RIVALS}
        labels = [i % 10 for i in range(args.n)] if model_name == "embedded-t2i" else None
        for label, timesteps in lists.items():
            key = f"{name}/{label}" if label == "learned" else f"{model_name}/{solver}-{steps_text}/{label}"
            if key in report["rows"]:
                continue
            images = draw(model_name, solver, timesteps, args.n, args.seed, args.batch_size)
            report["rows"][key] = {"entry": name, "list": label, "timesteps": timesteps,
                                   **scores(images, labels)}
            save_report(args.json, report)


def markdown(path: Path) -> str:
    """The floors, then each learned list against its rivals in both spaces; ✗ where the two spaces rank it
    differently against a rival (better in one, worse in the other). A list no longer in the catalogue is marked
    withdrawn."""
    import json

    report = json.loads(Path(path).read_text())
    rows = report["rows"]
    floor_rows = [[{"real": "real vs real (training images)", "vae": "embedded-t2i's VAE (their reconstructions)"}[k],
                   f"{v['searched_fid']:.3g}", f"{v['heldout_fid']:.3g}",
                   f"{100 * v['searched_label']:.1f} / {100 * v['heldout_label']:.1f} %"]
                  for k, v in report.get("floors", {}).items()]
    floors_table = markdown_table(["floor", "FID searched", "FID held-out", "labels (searched / held-out classifier)"],
                                  floor_rows)
    shipped = set(list_entries())
    out: list[list[Any]] = []
    for row in rows.values():
        if row["list"] != "learned":
            continue
        withdrawn = "" if row["entry"] in shipped else " (withdrawn)"
        model_name, family = row["entry"].split("/")
        rivals = {r: rows.get(f"{model_name}/{family}/{r}") for r in RIVALS}
        for rival, theirs in rivals.items():
            if theirs is None:
                continue
            gains = [100 * (1 - row[f"{s}_fid"] / theirs[f"{s}_fid"]) for s in ("searched", "heldout")]
            agree = "✓" if (gains[0] > 0) == (gains[1] > 0) else "✗"
            labels = (f"{100 * row['heldout_label']:.1f} / {100 * theirs['heldout_label']:.1f} %"
                      if "heldout_label" in row else "–")
            out.append([f"`learned:{row['entry']}`{withdrawn}", rival,
                        f"{row['searched_fid']:.3g} / {theirs['searched_fid']:.3g}", f"{gains[0]:+.0f} %",
                        f"{row['heldout_fid']:.3g} / {theirs['heldout_fid']:.3g}", f"{gains[1]:+.0f} %", labels, agree])
    header = ["learned list", "rival", "FID searched (learned / rival)", "gain searched",
              "FID held-out (learned / rival)", "gain held-out", "labels, held-out classifier", "spaces agree"]
    return floors_table + "\n\n" + markdown_table(header, out)


if __name__ == "__main__":
    main()
