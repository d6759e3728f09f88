"""Quality per NFE of every solver (DDIM, DPM-Solver++(2M), UniPC) on the embedded Fashion-MNIST model.

For each solver and NFE (one network call per step for all three; UniPC's corrector reuses the step's call), the
policies are: `uniform`; the best built-in policy at that solver and NFE among the other static policies (leading,
trailing, quadratic, karras, logsnr, front-loaded), chosen by FID on a separate calibration set (--calibration-n
samples from --calibration-seed); and the catalogue entry `learned:fashion-mnist/<solver>-<NFE>` where it exists.
DDIM also runs uniform at --ddim-nfe (default 50) as a high-NFE reference. FID/KID/precision/recall come from
`adaptive_sampler.metrics.evaluation.score_samples` (the embedded feature space, against the 10,000 test images).

Seeds: the scored samples use --seed (default 1000), held out from any tuning: no policy choice here and no
schedule search in this project looks at it (calibration uses seed 2000; searches use their own seeds).

Writes one table (printed and in --json), a plot of FID against NFE (one line per solver × policy kind; the chosen
built-in policy is written next to its points), and samples/s per solver and NFE with the ratio to DDIM. The
machine is shared, so timings are only comparable within one run. Resumable: rows already in --json are skipped.

    python experiments/bench_quality.py --json experiments/results/bench_quality.json            # ~1.5-2 h on CPU
    python experiments/bench_quality.py --n 200 --nfe 5 --json /tmp/bq.json                       # smoke test
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import environment, load_report, markdown_table, save_report
from tqdm.auto import tqdm

from adaptive_sampler.metrics.evaluation import score_samples
from adaptive_sampler.model_adapter import ModelAdapter
from adaptive_sampler.models import load_model
from adaptive_sampler.policies import STATIC_POLICIES, make_policy
from adaptive_sampler.sampler import sample
from adaptive_sampler.schedules.catalogue import list_entries
from adaptive_sampler.solvers import SOLVERS, make_solver

BUILTIN_CANDIDATES = tuple(name for name in STATIC_POLICIES if name != "uniform")
BATCH_SIZE = 64


@dataclass(frozen=True)
class Job:
    """One (solver, policy, NFE) cell to sample and score; `kind` is the plot line it belongs to."""

    solver: str
    policy: str
    nfe: int
    kind: str

    @property
    def key(self) -> str:
        return f"{self.solver}/{self.kind}/{self.nfe}"


def parse_nfes(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"error: {flag}: {text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise SystemExit(f"error: {flag}: {text!r} needs at least one NFE, each at least 1")
    return values


def run_job(adapter: ModelAdapter, shape: tuple[int, ...], job: Job, n: int, seed: int, bar: tqdm) -> dict:
    """Sample n images for the job and score them; the bar advances by one per sample per step."""
    def tick(info) -> None:
        bar.update(len(info.sample_indices))  # returns None, so no sample stops early

    timesteps = make_policy(job.policy).timesteps(job.nfe, adapter.schedule)
    result = sample(adapter, timesteps, shape, n, batch_size=BATCH_SIZE, seed=seed, solver=make_solver(job.solver),
                    monitor=tick)
    metrics = {k: v for k, v in asdict(score_samples(result.samples)).items() if v is not None}
    return {**asdict(job), **metrics, "nfe_mean": result.nfe_mean, "seed": seed,
            "timesteps": timesteps.tolist(), "wall_s": result.wall_s, "samples_per_s": n / result.wall_s}


def print_table(rows: dict) -> None:
    print(f"\n{'solver':9s} {'policy kind':14s} {'policy':36s} {'NFE':>4s} {'FID':>8s} {'KID':>8s} "
          f"{'prec':>6s} {'recall':>6s} {'samples/s':>9s}")
    for row in sorted(rows.values(), key=lambda r: (r["solver"], r["kind"], r["nfe"])):
        print(f"{row['solver']:9s} {row['kind']:14s} {row['policy']:36s} {row['nfe']:4d} {row['fid']:8.3f} "
              f"{row['kid']:8.4f} {row['precision']:6.3f} {row['recall']:6.3f} {row['samples_per_s']:9.1f}")


def markdown(path: Path) -> str:
    """The solver table of a results file: per solver and NFE, uniform, the best built-in and learned.

    Args:
        path: a bench_quality.py results file.
    """
    order = {"uniform": 0, "best built-in": 1, "learned": 2}
    rows = sorted(json.loads(path.read_text())["rows"].values(),
                  key=lambda r: (list(SOLVERS).index(r["solver"]), r["nfe"], order[r["kind"]]))
    return markdown_table(
        ["solver", "policy", "NFE", "FID", "KID", "precision", "recall", "samples/s"],
        [[r["solver"], f"best built-in: {r['policy']}" if r["kind"] == "best built-in" else r["policy"], r["nfe"],
          f"{r['fid']:.2f}", f"{r['kid']:.3f}", f"{r['precision']:.3f}", f"{r['recall']:.3f}",
          f"{r['samples_per_s']:.1f}"] for r in rows])


def speed_summary(rows: dict) -> dict:
    """samples/s per solver and NFE on the uniform rows, with the ratio to DDIM at the same NFE."""
    uniform = {(r["solver"], r["nfe"]): r["samples_per_s"] for r in rows.values() if r["kind"] == "uniform"}
    summary = {}
    for (solver, nfe), speed in sorted(uniform.items()):
        ddim = uniform.get(("ddim", nfe))
        summary[f"{solver}/{nfe}"] = {"samples_per_s": speed, "ratio_to_ddim": speed / ddim if ddim else None}
    return summary


def plot(rows: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines: dict[tuple[str, str], list[dict]] = {}
    for row in rows.values():
        lines.setdefault((row["solver"], row["kind"]), []).append(row)
    styles = {"uniform": ("-", "o"), "best built-in": ("--", "s"), "learned": (":", "^")}
    colors = dict(zip(SOLVERS, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    for (solver, kind), points in sorted(lines.items()):
        points.sort(key=lambda r: r["nfe"])
        ax.plot([r["nfe"] for r in points], [r["fid"] for r in points], styles[kind][0], marker=styles[kind][1],
                color=colors[solver], label=f"{solver} · {kind}")
        if kind == "best built-in":
            for r in points:
                ax.annotate(r["policy"], (r["nfe"], r["fid"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xscale="log", yscale="log", xlabel="NFE (network calls per sample)", ylabel="FID (embedded features)",
           title="Embedded Fashion-MNIST model: FID vs NFE")
    nfes = sorted({r["nfe"] for r in rows.values()})
    ax.set_xticks(nfes, [str(v) for v in nfes])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True, help="results file (read to resume, rewritten per row)")
    p.add_argument("--n", type=int, default=2000, help="scored samples per row")
    p.add_argument("--nfe", default="5,10,20", help="NFEs for every solver")
    p.add_argument("--ddim-nfe", default="50", help="extra NFEs for DDIM with the uniform policy ('' for none)")
    p.add_argument("--seed", type=int, default=1000, help="held-out seed of the scored samples")
    p.add_argument("--calibration-n", type=int, default=300, help="samples per candidate when choosing a policy")
    p.add_argument("--calibration-seed", type=int, default=2000)
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: --json with .png)")
    p.add_argument("--markdown", action="store_true", help="print the README table of --json and exit")
    args = p.parse_args()
    if args.markdown:
        print(markdown(args.json))
        return
    nfes = parse_nfes(args.nfe, "--nfe")
    ddim_nfes = parse_nfes(args.ddim_nfe, "--ddim-nfe") if args.ddim_nfe.strip() else []
    for flag, value in (("--n", args.n), ("--calibration-n", args.calibration_n)):
        if value <= 128:
            raise SystemExit(f"error: {flag}: {value} is not above the feature dimension 128; FID needs more")
    config = {"n": args.n, "seed": args.seed, "calibration_n": args.calibration_n,
              "calibration_seed": args.calibration_seed}
    results = load_report(args.json, {"config": config, "calibration": {}, "rows": {}}, "config")
    results.pop("command", None)  # an older file's; environment() records the command
    results["environment"] = environment()

    def save() -> None:
        save_report(args.json, results)

    loaded = load_model("embedded")
    adapter, shape = loaded.adapter(), loaded.sample_shape
    learned = set(list_entries())
    calibration = [Job(s, c, nfe, "calibration") for s in SOLVERS for nfe in nfes for c in BUILTIN_CANDIDATES]
    calibration = [j for j in calibration if f"{j.solver}/{j.nfe}/{j.policy}" not in results["calibration"]]
    fixed = [Job(s, "uniform", nfe, "uniform") for s in SOLVERS for nfe in nfes]
    fixed += [Job("ddim", "uniform", nfe, "uniform") for nfe in ddim_nfes if nfe not in nfes]
    learned_jobs = [Job(s, f"learned:{loaded.name}/{s}-{nfe}", nfe, "learned") for s in SOLVERS for nfe in nfes
                    if f"{loaded.name}/{s}-{nfe}" in learned]
    todo = [j for j in fixed if j.key not in results["rows"]]
    learned_todo = [j for j in learned_jobs if j.key not in results["rows"]]
    best_nfes = [nfe for s in SOLVERS for nfe in nfes if f"{s}/best built-in/{nfe}" not in results["rows"]]
    work = (sum(j.nfe for j in calibration) * args.calibration_n
            + (sum(j.nfe for j in todo + learned_todo) + sum(best_nfes)) * args.n)
    with tqdm(total=work, desc="sample-steps", unit="x", smoothing=0.05) as bar:
        for job in calibration:
            bar.set_postfix_str(f"calibrating {job.solver} {job.policy} @ {job.nfe}")
            row = run_job(adapter, shape, job, args.calibration_n, args.calibration_seed, bar)
            results["calibration"][f"{job.solver}/{job.nfe}/{job.policy}"] = row
            save()
        for solver in SOLVERS:
            for nfe in nfes:
                scored = {c: results["calibration"][f"{solver}/{nfe}/{c}"]["fid"] for c in BUILTIN_CANDIDATES}
                todo.append(Job(solver, min(scored, key=scored.get), nfe, "best built-in"))
        for job in todo + learned_todo:  # learned rows last: a search may still be writing their catalogue entries
            if job.key in results["rows"]:
                continue
            bar.set_postfix_str(f"{job.solver} {job.policy} @ {job.nfe}")
            results["rows"][job.key] = run_job(adapter, shape, job, args.n, args.seed, bar)
            save()
    results["speed"] = speed_summary(results["rows"])
    save()
    print_table(results["rows"])
    print("\nsamples/s (uniform rows; ratio to DDIM at the same NFE, same run):")
    for key, value in results["speed"].items():
        ratio = f"{value['ratio_to_ddim']:.2f}x DDIM" if value["ratio_to_ddim"] else "-"
        print(f"  {key:14s} {value['samples_per_s']:8.1f}  {ratio}")
    plot_path = args.plot or args.json.with_suffix(".png")
    plot(results["rows"], plot_path)
    print(f"\ntable: {args.json}\nplot:  {plot_path}")


if __name__ == "__main__":
    main()
