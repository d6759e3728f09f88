"""Schedule search methods compared on the embedded model: TPE, CMA-ES and LD3, by held-out FID and search time.

For each solver and budget N (`--combos ddim-5,unipc-5,...`), each method searches a list and the list is scored
on 2,000 held-out samples (seed 1000) in the embedded feature space, the protocol of `bench_quality.py`:
- `cmaes`: `tune --method cmaes` (FID on 512 tuning samples, seeds 0-1, pruned; the warm starts first, then CMA-ES
  from the best of them with σ0 = 0.05 in the space scaled to [0, 1]).
- `ld3`: `tune --method ld3` (each trial one LD3 run from a warm start, scored by FID on the same tuning samples;
  its first trial takes LD3's defaults).
- `tpe`: the lists of the project's TPE studies (`experiments/results/tune_fashion_mnist_fid*/report.json`), scored
  on the same held-out samples (bench_quality's score is reused where it scored the same list); TPE is not re-run
  here. Its search time is the README's (61 min for the DDIM 5 and 10 studies together, one thread); the UniPC
  study's was not recorded.
The uniform, best built-in, shipped-list and uniform 2N rows, and the model's converged FID (the best many-step
result on the same held-out samples), are read from `bench_quality.json` and `quality_table.json`: the same seeds
and protocol, and sampling is bitwise deterministic on CPU, so re-running them would give the same numbers.
`--ship` writes a searched list to the catalogue only where it beats the shipped entry's held-out FID.

Resumable: each (combo, method) row is saved to the JSON as it finishes, and the studies live in a journal under
runs/bench_search/ (an interrupted search resumes its trials). Run with one thread:
    OMP_NUM_THREADS=1 python experiments/bench_search.py --combos ddim-5,dpmpp-2m-5,unipc-5,ddim-10
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import optuna
import torch
from harness import RESULTS, environment, load_report, markdown_table, save_report

from adaptive_sampler import sample
from adaptive_sampler.metrics.evaluation import score_samples
from adaptive_sampler.models import load_model
from adaptive_sampler.policies import make_policy
from adaptive_sampler.solvers import make_solver
from adaptive_sampler.tuning.settings import TuneSettings
from adaptive_sampler.tuning.storage import open_storage
from adaptive_sampler.tuning.study import BudgetBest, Tuner

HELDOUT_N, HELDOUT_SEED, BATCH = 2000, 1000, 64
TUNING_N = 512  # this bench's tuning samples per trial unless --tuning-n (rows without `tuning_n` used it)
TPE_REPORT = RESULTS / "tune_fashion_mnist_fid" / "report.json"  # DDIM 5/10, 60 trials each
TPE_UNIPC_REPORT = RESULTS / "tune_fashion_mnist_fid_unipc" / "report.json"  # UniPC 5, 30 trials


def heldout(model, solver: str, timesteps: list[float]) -> dict:
    start = time.perf_counter()
    out = sample(model.adapter(), timesteps, model.sample_shape, HELDOUT_N, batch_size=BATCH, seed=HELDOUT_SEED,
                 solver=make_solver(solver), progress=True)
    metrics = score_samples(out.samples)
    return {"fid": metrics.fid, "kid": metrics.kid, "timesteps": timesteps, "n": HELDOUT_N, "seed": HELDOUT_SEED,
            "score_wall_s": time.perf_counter() - start}


def search(model, solver: str, steps: int, method: str, trials: int, storage_dir: Path,
           tuning_n: int = TUNING_N) -> tuple[BudgetBest, float]:
    """Run (or resume) the method's study; its best trial and the study's summed trial wall time."""
    suffix = "" if tuning_n == TUNING_N else f"-n{tuning_n}"
    settings = TuneSettings(steps=(steps,), trials=trials, objective="fid", solver=solver, method=method,
                            sampler_seed=0, study_name=f"bench-{solver}-{method}{suffix}", n=tuning_n)
    storage_dir.mkdir(parents=True, exist_ok=True)
    tuner = Tuner(model, settings, open_storage(f"journal:{storage_dir / 'studies.journal'}"),
                  cache_dir=storage_dir / "cache")
    start = time.perf_counter()
    run = tuner.run(on_trial=lambda r: print(f"  {method} {solver}-{steps} trial {r.number} {r.state} "
                                             f"fid={r.value} ({r.wall_s or 0:.0f} s)", flush=True))
    study = tuner.open(steps)
    trial_wall = sum(t.user_attrs.get("wall_s", 0.0) for t in study.trials)
    print(f"  {method} {solver}-{steps}: this run {time.perf_counter() - start:.0f} s, all trials {trial_wall:.0f} s")
    return next(b for b in run.best if b.steps == steps), trial_wall


def tpe_row(solver: str, steps: int) -> dict | None:
    report = TPE_UNIPC_REPORT if solver == "unipc" else TPE_REPORT
    data = json.loads(report.read_text())
    if data["settings"]["solver"] != solver:
        return None
    learned = next((x for x in data["learned"] if x["steps"] == steps), None)
    if learned is None:
        return None
    return {"timesteps": learned["timesteps"], "search_wall_s": None, "trials": data["settings"]["trials"],
            "source": str(report.relative_to(RESULTS.parent.parent))}


def quality_rows() -> dict:
    """bench_quality.json's held-out rows by key (`solver/kind/NFE`)."""
    return json.loads((RESULTS / "bench_quality.json").read_text())["rows"]


def combo_key(combo: str) -> tuple[str, int]:
    """`dpmpp-2m-10` -> ("dpmpp-2m", 10): sorts by solver, then N as a number."""
    solver, steps = combo.rsplit("-", 1)
    return solver, int(steps)


def baselines(solver: str, steps: int) -> dict:
    """Held-out FID of uniform, the best built-in (chosen on calibration seeds) and the shipped catalogue list at N,
    and of uniform at 2N, from bench_quality.json."""
    rows = quality_rows()
    pick = {}
    for row in rows.values():
        if row["solver"] != solver:
            continue
        if row["nfe"] == steps:
            label = {"uniform": "uniform", "learned": "shipped (bench_quality)"}.get(row["kind"],
                                                                                  f"best built-in: {row['policy']}")
            pick[label] = row["fid"]
        if row["nfe"] == 2 * steps and row["kind"] == "uniform":
            pick[f"uniform {2 * steps}"] = row["fid"]
    return pick


def scored_list(solver: str, timesteps: list[float]) -> float | None:
    """bench_quality's held-out FID of this exact list with this solver, if it scored it."""
    return next((r["fid"] for r in quality_rows().values() if r["solver"] == solver and r["timesteps"] == timesteps),
                None)


def floors() -> dict:
    """The real-vs-real floor and the model's converged FID: the best many-step result measured, on the held-out
    samples the lists are scored on (bench_quality.json's rows of 20 NFE or more, seed 1000), and for reference on
    the quality table's samples (seed 0; its 50-step and longer rows, quality_table.json). FID at n = 2,000 moves
    with the sample set by a few tenths, so a list is held against the converged FID of its own samples."""
    table = json.loads((RESULTS / "quality_table.json").read_text())
    rows = quality_rows()
    heldout = {key: row["fid"] for key, row in rows.items() if row["nfe"] >= 20}
    seed0 = {key: row["fid"] for key, row in table.items() if row.get("nfe", 0) >= 50}
    best, best_seed0 = min(heldout, key=heldout.__getitem__), min(seed0, key=seed0.__getitem__)
    return {"real_vs_real": table["real-vs-real"]["fid"], "ddpm_1000": table["ddpm-1000"]["fid"],
            "converged": heldout[best], "converged_row": best,
            "converged_quality_table": seed0[best_seed0], "converged_quality_table_row": best_seed0}


def plot(results: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    markers = {"tpe": "o", "cmaes": "s", "ld3": "^"}
    for combo, rows in results["combos"].items():
        for method, row in rows.get("methods", {}).items():
            if row.get("search_wall_s") and "fid" in row:
                ax.scatter(row["search_wall_s"] / 60, row["fid"], marker=markers[method], s=60,
                           label=f"{method} {combo}")
                ax.annotate(combo, (row["search_wall_s"] / 60, row["fid"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    ax.set_xlabel("search wall time on this 2-core CPU, one thread (min)")
    ax.set_ylabel(f"held-out FID (n={HELDOUT_N}, embedded features)")
    ax.set_title("schedule search: FID against search time", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.savefig(path, dpi=120, bbox_inches="tight")


def markdown(path: Path) -> str:
    """The method tables of a results file: held-out FID per method (search time in brackets) beside the static
    rows, then the best list per combo against its best built-in.

    Args:
        path: a bench_search.py results file.
    """
    methods = ("tpe", "cmaes", "ld3")
    table, best_rows = [], []
    for combo, entry in sorted(json.loads(path.read_text())["combos"].items(), key=lambda item: combo_key(item[0])):
        solver, steps = combo_key(combo)
        base = entry.get("baselines", {})
        builtin = next(((k.split(": ")[1], v) for k, v in base.items() if k.startswith("best built-in")), None)
        cells = []
        for method in methods:
            row = entry["methods"].get(method)
            wall = row.get("search_wall_s") if row else None
            cells.append("–" if row is None else f"{row['fid']:.2f}" + (f" ({wall / 60:.1f} min)" if wall else ""))
        shipped, double = base.get("shipped (bench_quality)"), base.get(f"uniform {2 * steps}")
        table.append([f"{solver} {steps}", f"{base.get('uniform', float('nan')):.2f}",
                      f"{builtin[0]} {builtin[1]:.2f}" if builtin else "–", *cells,
                      f"{shipped:.2f}" if shipped else "–", f"{double:.2f}" if double else "–"])
        found = {m: r for m, r in entry["methods"].items() if "fid" in r}
        if found and builtin:
            method, row = min(found.items(), key=lambda item: item[1]["fid"])
            listed = ", ".join(f"{t:g}" if float(t).is_integer() else f"{t:.1f}" for t in row["timesteps"])
            best_rows.append([f"{solver} {steps}", f"{row['fid']:.2f}", method, f"{builtin[0]} {builtin[1]:.2f}",
                              f"{100 * (row['fid'] / builtin[1] - 1):+.0f} %", listed])
    return (markdown_table(["solver, N", "uniform", "best built-in", *methods, "shipped", "uniform 2N"], table)
            + "\n\n" + markdown_table(["solver, N", "best searched", "method", "best built-in", "vs best built-in",
                                        "list"], best_rows))


def catalogue_markdown(quality_path: Path = RESULTS / "bench_quality.json",
                       heldout_path: Path = RESULTS / "bench_heldout_space.json") -> str:
    """The shipped fashion-mnist lists with their held-out FID beside uniform and the best built-in at the same N
    and seeds, and their gain in the held-out feature space over the best of uniform, karras and trailing.

    Args:
        quality_path: the bench_quality.py results file of those seeds.
        heldout_path: the bench_heldout_space.py results file.
    """
    from adaptive_sampler.schedules.catalogue import list_entries, load_entry

    rows = json.loads(quality_path.read_text())["rows"]
    heldout = json.loads(heldout_path.read_text())["rows"]
    table = []
    for name in sorted((n for n in list_entries() if n.startswith("fashion-mnist/")), key=combo_key):
        artifact = load_entry(name)
        steps = len(artifact.timesteps)
        uniform = rows[f"{artifact.solver}/uniform/{steps}"]["fid"]
        builtin = rows[f"{artifact.solver}/best built-in/{steps}"]
        fid = artifact.metrics["heldout_fid"]
        found = [artifact.method.split(" (")[0].split(" from")[0].replace("optuna ", "")]
        tuning_n = re.search(r"n=(\d+)", artifact.objective or "")
        if tuning_n and int(tuning_n[1]) != TUNING_N:
            found.append(f"{int(tuning_n[1]):,} tuning samples")
        warm = re.search(r"the best was warm start '([^']+)'", artifact.method)
        if warm:
            found.append(f"its best trial the {warm[1]} warm start")
        rivals = [heldout[f"fashion-mnist/{artifact.solver}-{steps}/{r}"]["heldout_fid"]
                  for r in ("uniform", "karras", "trailing")]
        space_gain = heldout[f"{name}/learned"]["heldout_fid"] / min(rivals) - 1
        table.append([f"`learned:{name}`", f"{fid:.2f}", f"{uniform:.2f}", f"{builtin['policy']} {builtin['fid']:.2f}",
                      f"{100 * (fid / min(uniform, builtin['fid']) - 1):+.0f} %", f"{100 * space_gain:+.0f} %",
                      ", ".join(found), ", ".join(f"{t:g}" for t in artifact.timesteps)])
    return markdown_table(["entry", "held-out FID", "uniform", "best built-in", "vs the better of the two",
                           "held-out space, vs the best of uniform/karras/trailing", "found by", "list"], table)


def won_by(row: dict) -> str:
    """', the best was warm start X' where the search's best trial was a warm start (it did not improve on it)."""
    return f", the best was warm start {row['warm_start']!r}" if row.get("warm_start") else ""


def ship(results: dict, model) -> None:
    """Write the best searched list of each combo to the catalogue where it beats the shipped entry (or there is
    none) and every static baseline at N (uniform, the best built-in) on the held-out FID, with its held-out
    scores and how it was found. A learned entry that loses to a built-in would mislead whoever picks it."""
    from adaptive_sampler.schedules.artifact import ModelIdentity, NoiseScheduleSpec, ScheduleArtifact
    from adaptive_sampler.schedules.catalogue import catalogue_dir

    config = model.scheduler_config
    spec = NoiseScheduleSpec(**{k: config[k] for k in NoiseScheduleSpec.model_fields if k in config})
    for combo, entry in results["combos"].items():
        solver, steps = combo.rsplit("-", 1)
        found = {m: r for m, r in entry["methods"].items() if m != "tpe" and "fid" in r}
        if not found:
            continue
        method, row = min(found.items(), key=lambda item: item[1]["fid"])
        path = catalogue_dir() / "fashion-mnist" / f"{solver}-{steps}.json"
        shipped = ScheduleArtifact.load(path).metrics["heldout_fid"] if path.exists() else float("inf")
        if row["fid"] >= shipped:
            print(f"{combo}: the shipped list ({shipped:.3f}) stays; {method} reached {row['fid']:.3f}")
            continue
        static = {k: v for k, v in entry["baselines"].items() if k == "uniform" or k.startswith("best built-in")}
        if len(static) < 2 or row["fid"] >= min(static.values()):
            print(f"{combo}: not shipped; {method} reached {row['fid']:.3f}, the static rows {static}")
            continue
        how = {"cmaes": "optuna CMA-ES from the best warm start over the 'free' space",
               "ld3": "LD3 discretisation learning, hyperparameters by optuna TPE"}[method]
        artifact = ScheduleArtifact(
            num_train_timesteps=model.adapter().schedule.num_train_timesteps, timesteps=row["timesteps"],
            solver=solver, model=ModelIdentity(name="fashion-mnist", weights_sha256=model.weights_sha256),
            noise_schedule=spec, objective=f"fid on tuning seeds 0..1 (n={row.get('tuning_n', TUNING_N)})",
            metrics={"heldout_fid": row["fid"], "heldout_kid": row["kid"], "heldout_n": float(HELDOUT_N),
                     "heldout_seed": float(HELDOUT_SEED), "nfe": float(steps), "search_wall_s": row["search_wall_s"]},
            method=f"{how} ({row['trials']} trials{won_by(row)}; experiments/bench_search.py)")
        artifact.save(path)
        print(f"{combo}: shipped {method} ({row['fid']:.3f}, was {shipped:.3f}) -> {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--combos", default="ddim-5,dpmpp-2m-5,unipc-5,ddim-10")
    p.add_argument("--methods", default="ld3,cmaes")
    p.add_argument("--cmaes-extra-trials", type=int, default=10, help="CMA-ES trials after the warm starts")
    p.add_argument("--ld3-trials", type=int, default=1)
    p.add_argument("--tuning-n", type=int, default=TUNING_N, help="tuning samples per trial (FID objective)")
    p.add_argument("--json", type=Path, default=RESULTS / "bench_search.json")
    p.add_argument("--workdir", type=Path, default=Path("runs/bench_search"))
    p.add_argument("--ship", action="store_true", help="only write the winners to the catalogue (no searching)")
    p.add_argument("--markdown", action="store_true", help="print the README tables of --json and exit")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.manual_seed(0)
    if args.markdown:
        print(markdown(args.json) + "\n\n" + catalogue_markdown())
        return
    results = load_report(args.json, {"combos": {}})
    results.pop("command", None)  # an older file's; environment() records the command
    results["environment"] = environment()
    results["floors"] = floors()
    model = load_model("embedded")
    if args.ship:
        ship(results, model)
        return

    def save() -> None:
        save_report(args.json, results)
        plot(results, args.json.with_suffix(".png"))

    for combo in args.combos.split(","):
        solver, steps_text = combo.rsplit("-", 1)
        steps = int(steps_text)
        entry = results["combos"].setdefault(combo, {"methods": {}})
        entry["baselines"] = baselines(solver, steps)
        tpe = tpe_row(solver, steps)
        if tpe is not None and "tpe" not in entry["methods"]:
            fid = scored_list(solver, tpe["timesteps"])  # the same seeds and list as bench_quality: reuse its score
            entry["methods"]["tpe"] = {**tpe, **({"fid": fid} if fid is not None else
                                                 heldout(model, solver, tpe["timesteps"]))}
            if solver == "ddim":
                entry["methods"]["tpe"].update(search_wall_s=61 * 60, search_wall_note="DDIM 5 and 10 together")
            save()
        for method in args.methods.split(","):
            if method in entry["methods"]:
                continue
            print(f"{combo}: {method}", flush=True)
            if method == "cmaes":
                warm = len(Tuner(model, TuneSettings(steps=(steps,), trials=1, objective="fid", solver=solver),
                                 optuna.storages.InMemoryStorage(), cache_dir=args.workdir / "cache"
                                 ).warm_start_lists(steps))
                trials = warm + args.cmaes_extra_trials
            else:
                trials = args.ld3_trials
            best, wall = search(model, solver, steps, method, trials, args.workdir, args.tuning_n)
            entry["methods"][method] = {"trials": trials, "tuning_n": args.tuning_n, "search_wall_s": wall,
                                        "warm_start": best.warm_start,
                                        **heldout(model, solver, [float(t) for t in best.timesteps])}
            save()
        uniform = make_policy("uniform").timesteps(steps, model.adapter().schedule).tolist()
        entry["uniform_timesteps"] = uniform
        save()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
