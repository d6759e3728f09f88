"""Early exit judged at equal cost: every adaptive row against the best static schedule of the same solver and NFE.

For each solver (default DDIM and DPM-Solver++(2M), η = 0) at --steps (default 20) uniform steps, in one run:
  1. calibration: the full run's x̂0 trace is recorded once on calibration seeds and once on held-out seeds (both
     disjoint from the evaluation seed); each monitor's threshold is calibrated for each --targets entry
     (`psnr:DB`: PSNR of the mean squared error to the full run; `fid:PCT` / `kid:PCT`: FID / KID of the exits at
     most PCT % above the full run's, priced at x̂0 exits; `adaptive_sampler.monitors.calibrate_threshold`) and
     checked on the held-out trace. `--steering auto` derives `steer-x0-l2:LOW:HIGH` from the calibration trace;
     `--steering nfe:N` scales it to a mean NFE of N on the calibration seeds (`monitors.calibrate_steering`).
  2. evaluation on n samples of the evaluation seed (the same noise in every row):
     - the full run, and the longer uniform runs of --reference-steps (e.g. 50);
     - each calibrated monitor, finished by each --finish mode (`tail` = tail:3:t, or `x0`);
     - each steering monitor on `SteeredPlan(steps)` (the monitor alone sets the step sizes);
     - the runtime-adaptive step-size control (`adaptive:TOL`; its NFE counts rejected steps);
     - for every one of those adaptive rows, the static competitors at its mean NFE (rounded): uniform, the
       solver's best built-in (--best-builtin; only up to the full run's step count) and the learned catalogue
       list where one exists at that NFE.

Per adaptive row: mean NFE, FID/KID in the embedded feature space, fidelity to the full run, wall time with the
monitor's own cost, its FID against the best static row of equal NFE (the test of adaptivity: the goal is >= 5 %
lower FID), and NFE reduction, FID change and wall-clock speed-up (and speed-up / NFE ratio) against the full
run and the reference runs. Rows go into the JSON as they finish and are reused when the same command runs again
(`--restart` discards them); the full run's samples are kept next to the JSON for fidelity on resume.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench_early_exit.py --json experiments/results/bench_early_exit.json
    # smoke: --n 200 --steps 8 --samples-per-seed 32 --reference-steps
    # calibrate only and ship the DDIM thresholds as package defaults (once per step count):
    .venv/bin/python experiments/bench_early_exit.py --json runs/calib.json --calibrate-only --write-defaults \\
        --solvers ddim --steps 20 --samples-per-seed 128 --monitors x0-l2 ssim haarpsi gmsd features sharpness
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from harness import (
    command,
    environment,
    load_report,
    markdown_table,
    pick_device,
    round_decimals,
    save_report,
    timed,
)
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from adaptive_sampler.errors import FieldError
from adaptive_sampler.finish import parse_finish
from adaptive_sampler.metrics import EmbeddedFeatureExtractor, fidelity
from adaptive_sampler.metrics.evaluation import score_samples
from adaptive_sampler.models import LoadedModel, load_model
from adaptive_sampler.monitors import (
    DEFAULTS_PATH,
    MONITORS,
    LPIPSWeightsMissingError,
    Monitor,
    calibrate_steering,
    load_calibrated_defaults,
    monitor_from_spec,
)
from adaptive_sampler.monitors.base import ThresholdMonitor
from adaptive_sampler.monitors.calibration import (
    CalibrationTarget,
    DistributionTarget,
    PsnrTarget,
    X0Trace,
    calibrate_threshold,
    default_entry_of,
    psnr_of,
    record_x0_trace,
)
from adaptive_sampler.monitors.spec import BUDGET_NAMES, DEFAULTS_FORMAT, calibration_monitor
from adaptive_sampler.pipeline import Conditions, read_prompts
from adaptive_sampler.policies import STATIC_POLICIES, make_policy
from adaptive_sampler.policies.builtin import Uniform
from adaptive_sampler.policies.step_size_control import SteeredPlan, StepSizeControl
from adaptive_sampler.sampler import sample
from adaptive_sampler.schedules.catalogue import list_entries
from adaptive_sampler.solvers import SOLVERS, make_solver

DEFAULT_MONITORS = ["x0-l2", "features", "sharpness", "lpips"]
NFE_GOAL, FID_TOLERANCE = 0.25, 3.0


# ------------------------------------------------------------------------------------------------------ helpers
class TimedCallback:
    """Wraps a monitor (its call, `reset` and `keep`) and adds up the time spent inside it (synchronised on GPUs)."""

    def __init__(self, monitor: Monitor, device: torch.device) -> None:
        self.monitor, self.device, self.seconds = monitor, device, 0.0

    def _timed(self, call: Callable[..., Any], *args: Any) -> Any:
        out, seconds = timed(self.device, call, *args)
        self.seconds += seconds
        return out

    def __call__(self, info: Any) -> Any:
        return self._timed(self.monitor, info)

    def reset(self) -> None:
        self._timed(self.monitor.reset)

    def keep(self, rows: torch.Tensor) -> None:
        self._timed(self.monitor.keep, rows)


def _name(spec: str) -> str:
    return spec.split(",")[0].split(":")[0].strip()


def _has_threshold(spec: str) -> bool:
    return ":" in spec.split(",")[0]


class Report:
    """The JSON file: settings, calibration results and evaluation rows, written after every finished task."""

    def __init__(self, path: Path, settings: dict[str, Any], restart: bool) -> None:
        self.path = path
        self.data = load_report(path, {"settings": settings, "calibration": {}, "rows": {}, "summary": {}},
                                "settings", restart)

    def get(self, kind: str, section: str, key: str) -> dict[str, Any] | None:
        return self.data[kind].get(section, {}).get(key)

    def put(self, kind: str, section: str, key: str, value: dict[str, Any]) -> None:
        self.data[kind].setdefault(section, {})[key] = value
        self.save()

    def save(self) -> None:
        save_report(self.path, self.data)


# -------------------------------------------------------------------------------------------------- calibration
def _parse_target(text: str) -> tuple[str, float]:
    kind, _, value = text.partition(":")
    if kind not in ("psnr", "fid", "kid"):
        raise ValueError(f"{text!r} is not psnr:DB, fid:PCT or kid:PCT")
    return kind, float(value)


def _target_label(target: tuple[str, float]) -> str:
    kind, value = target
    return f"{value:g}dB" if kind == "psnr" else f"{kind}+{value:g}%"


def _target(target: tuple[str, float]) -> CalibrationTarget:
    kind, value = target
    return PsnrTarget(value) if kind == "psnr" else DistributionTarget(kind, value)  # type: ignore[arg-type]


def _distribution_text(cal: dict[str, Any]) -> str:
    if cal.get("target_distribution") is None:
        return ""
    metric, full = cal["target_distribution"]["metric"].upper(), cal["full_distribution"]
    return (f"   {metric} {cal['calibration']['distribution']:.4g} / {cal['heldout']['distribution']:.4g}"
            f" (full run {full['calibration']:.4g} / {full['heldout']:.4g})")


def _latent_arguments(model: LoadedModel, space: str) -> dict[str, Any]:
    """What tracing and calibration need for a conditional latent model, monitors reading x̂0 in `space` (nothing
    for the pixel model)."""
    if model.decoder is None:
        return {}
    return {"conditioning": model.conditioning, "decode": model.decode, "space": space}


def calibrate_all(model: LoadedModel, adapter: Any, solver: str, args: argparse.Namespace, report: Report,
                  extractor: EmbeddedFeatureExtractor, bar: tqdm) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Each monitor calibrated on `solver`'s traces for each --targets entry (keys `SPEC@30dB`, `SPEC@fid+3%`; a spec
    with its own threshold is used as given), and the steering specs (--steering, `auto` from the calibration
    trace)."""
    steps, section = args.steps, _section(solver, args.steps)
    timesteps = Uniform().timesteps(steps, adapter.schedule)
    traces: dict[tuple[str, str], X0Trace] = {}

    def trace(which: str, space: str = "latent") -> X0Trace:
        if (which, space) not in traces:
            seeds = args.calibration_seeds if which == "calibration" else args.heldout_seeds
            bar.set_postfix_str(f"{solver}: recording {which} traces")
            traces[which, space] = record_x0_trace(
                adapter, model.sample_shape, timesteps, seeds, args.samples_per_seed, batch_size=args.batch_size,
                solver=make_solver(solver), **_latent_arguments(model, space))
        return traces[which, space]

    results: dict[str, dict[str, Any]] = {}
    for spec in args.monitors:
        for target in ([None] if _has_threshold(spec) else args.targets):
            key = spec if target is None else f"{spec}@{_target_label(target)}"
            done = report.get("calibration", section, key)
            if done is None:
                bar.set_postfix_str(f"{solver}: calibrating {key}")
                if target is None:
                    done = {"spec": spec, "calibrated": False, "reason": "threshold given on the command line"}
                elif not MONITORS[_name(spec)].calibratable:
                    done = {"spec": spec, "skipped": f"{_name(spec)} is a wall-clock budget: give its seconds, "
                                                     f"e.g. {_name(spec)}:0.5"}
                else:
                    try:
                        start = time.perf_counter()
                        monitor, space = calibration_monitor(spec)
                        result = calibrate_threshold(monitor, _target(target), trace("calibration", space),
                                                     trace("heldout", space), feature_extractor=extractor)
                        done = {"spec": result.monitor, "calibrated": True, "seconds": time.perf_counter() - start,
                                **result.to_json()}
                    except LPIPSWeightsMissingError as e:
                        done = {"spec": spec, "skipped": f"{type(e).__name__}: {e}"}
                report.put("calibration", section, key, done)
            results[key] = done
            bar.update(1)
    specs = []
    for entry in args.steering:  # each --steering entry once: `auto`, `nfe:N` or a spec as given
        done = report.get("calibration", section, f"steering {entry}")
        if done is None:
            bar.set_postfix_str(f"{solver}: steering {entry}")
            if entry == "auto":
                done = {"spec": steering_spec(trace("calibration"), args.batch_size)}
            elif entry.startswith("nfe:"):
                start = time.perf_counter()
                result = calibrate_steering(
                    adapter, model.sample_shape, SteeredPlan(steps=steps), float(entry.removeprefix("nfe:")),
                    calibration_seeds=args.calibration_seeds, heldout_seeds=args.heldout_seeds,
                    samples_per_seed=args.samples_per_seed, batch_size=args.batch_size, solver=make_solver(solver),
                    conditioning=model.conditioning)
                done = {"spec": result.monitor, "seconds": time.perf_counter() - start, **result.to_json()}
            else:
                done = {"spec": entry}
            report.put("calibration", section, f"steering {entry}", done)
        specs.append(done["spec"])
    return results, specs


# --------------------------------------------------------------------------------------------------- evaluation
def _row(samples: torch.Tensor, nfe: torch.Tensor, wall_s: float, full: torch.Tensor | None,
         extractor: EmbeddedFeatureExtractor, monitor_s: float = 0.0) -> dict[str, Any]:
    """Scores of images (a latent model's samples decoded first) against the test set and the full run."""
    metrics = score_samples(samples)
    row: dict[str, Any] = {"nfe_mean": float(nfe.double().mean()), "nfe_min": int(nfe.min()),
                           "nfe_median": float(nfe.double().median()), "nfe_max": int(nfe.max()),
                           "fid": metrics.fid, "kid": metrics.kid, "precision": metrics.precision,
                           "recall": metrics.recall, "wall_s": wall_s, "monitor_s": monitor_s}
    if full is not None:
        fid_ = fidelity(samples, full, extractor)
        mse = ((samples.float() - full.float()) / 2).clamp(-1, 1).pow(2).flatten(1).mean(1).double()
        row.update({"psnr_of_mean_mse": float(psnr_of(mse.mean())), "mean_psnr": fid_.psnr,
                    "psnr_p10": float(torch.quantile(psnr_of(mse), 0.1)), "ssim": fid_.ssim,
                    "feature_distance": fid_.feature_distance})
    return row


def steering_spec(calibration_trace: X0Trace, batch_size: int) -> str:
    """`steer-x0-l2:LOW:HIGH` from the calibration trace: LOW and HIGH are the 25th and 75th percentiles of the
    per-step relative L2 change of x̂0 (steps after the first), so a sample whose x̂0 moves less than most doubles
    its next step and one that moves more than most halves it."""
    monitor = monitor_from_spec("x0-l2:1")
    assert isinstance(monitor, ThresholdMonitor)  # noqa: S101
    scores = monitor.replay_scores(calibration_trace.step_infos(batch_size), calibration_trace.n,
                                   calibration_trace.num_steps)[:, 1:]
    finite = scores[torch.isfinite(scores)].double()
    low, high = (float(torch.quantile(finite, q)) for q in (0.25, 0.75))
    return f"steer-x0-l2:{low:.4g}:{high:.4g}"


def _learned_entry(model: str, solver: str, steps: int) -> str | None:
    name = f"{model}/{solver}-{steps}"
    return f"learned:{name}" if name in list_entries() else None


def evaluate_solver(model: LoadedModel, adapter: Any, solver: str, calibration: dict[str, dict[str, Any]],
                    steering: list[str], args: argparse.Namespace, report: Report,
                    extractor: EmbeddedFeatureExtractor, device: torch.device, bar: tqdm) -> None:
    """Every row of one solver at `args.steps` steps: the full runs, the adaptive rows and their static competitors
    of equal NFE (uniform, the solver's best built-in, learned where the catalogue has that step count)."""
    steps, shape, section = args.steps, model.sample_shape, _section(solver, args.steps)
    full_file = args.json.with_name(f"{args.json.stem}.{solver}-full-{steps}.safetensors")

    def run(plan: Any, monitor: Any = None, finish: str | None = None) -> tuple[Any, float]:
        """Samples as images (decoded inside the timing: a latent model's user pays for it) and the wall time."""
        def draw() -> Any:
            result = sample(adapter, plan, shape, args.n, batch_size=args.batch_size, seed=args.seed,
                            solver=make_solver(solver), monitor=monitor, finish=parse_finish(finish),
                            conditioning=model.conditioning)
            return replace(result, samples=model.decode(result.samples.to(device)).cpu())
        return timed(device, draw)

    def static_row(key: str, policy: str, num_steps: int, full: torch.Tensor | None) -> None:
        if policy == "uniform" and num_steps == steps and key != "full":
            report.put("rows", section, key, {**report.get("rows", section, "full"), "kind": "static",
                                              "same_as": "full"})  # the full run itself
        if report.get("rows", section, key) is None:
            bar.set_postfix_str(f"{solver}: {key}")
            result, wall = run(make_policy(policy).timesteps(num_steps, adapter.schedule))
            report.put("rows", section, key, {"kind": "static", "policy": policy, "steps": num_steps,
                                              **_row(result.samples, result.nfe, wall, full, extractor)})

    # the full run: its samples are the fidelity reference of every other row
    if report.get("rows", section, "full") is None or not full_file.is_file():
        bar.set_postfix_str(f"{solver}: full run, {steps} steps")
        result, wall = run(Uniform().timesteps(steps, adapter.schedule))
        save_file({"samples": result.samples.contiguous()}, str(full_file))
        report.put("rows", section, "full", {"kind": "full", "policy": "uniform", "steps": steps,
                                             **_row(result.samples, result.nfe, wall, None, extractor)})
    full = load_file(str(full_file))["samples"]
    bar.update(1)
    for long_steps in args.reference_steps:
        static_row(f"full-{long_steps}", "uniform", long_steps, full)
        bar.update(1)

    for key, cal in calibration.items():  # calibrated monitors, each finished by every --finish mode
        for finish in args.finish:
            row_key = f"{key}/{finish}"
            if report.get("rows", section, row_key) is None:
                bar.set_postfix_str(f"{solver}: {row_key}")
                if "skipped" in cal:
                    row: dict[str, Any] = {"kind": "monitor", "skipped": cal["skipped"]}
                else:
                    monitor = TimedCallback(monitor_from_spec(cal["spec"], decode=model.decode), device)
                    result, wall = run(Uniform().timesteps(steps, adapter.schedule), monitor, finish)
                    row = {"kind": "monitor", "spec": cal["spec"], "finish": finish,
                           "calibrated": cal.get("calibrated", False),
                           **_row(result.samples, result.nfe, wall, full, extractor, monitor.seconds)}
                report.put("rows", section, row_key, row)
            bar.update(1)
    for spec in steering:  # steering monitors on a plan whose steps only they change
        row_key = f"{spec}/steered:{steps}"
        if report.get("rows", section, row_key) is None:
            bar.set_postfix_str(f"{solver}: {row_key}")
            monitor = TimedCallback(monitor_from_spec(spec), device)
            result, wall = run(SteeredPlan(steps=steps), monitor)
            report.put("rows", section, row_key, {"kind": "steering", "spec": spec,
                                                  **_row(result.samples, result.nfe, wall, full, extractor,
                                                         monitor.seconds)})
        bar.update(1)
    for tolerance in args.adaptive_tolerances:
        policy = StepSizeControl(tolerance=tolerance)
        if report.get("rows", section, policy.name) is None:
            bar.set_postfix_str(f"{solver}: {policy.name}")
            result, wall = run(policy)
            report.put("rows", section, policy.name, {
                "kind": "adaptive", "spec": policy.name, "rejected_mean": float(result.rejected.double().mean()),
                **_row(result.samples, result.nfe, wall, full, extractor)})
        bar.update(1)

    # the static competitors of every adaptive row at its mean NFE (rounded; shared between rows of equal NFE); above
    # the full run's step count only uniform (the built-ins are within 1 % of it at 20 steps on this model)
    for row in list(report.data["rows"][section].values()):  # this pass's rows and those of earlier passes
        if row.get("kind") not in ("monitor", "steering", "adaptive") or "skipped" in row:
            continue
        equal = max(1, round(row["nfe_mean"]))
        if args.static_nfe_cap is not None:  # a row above the cap meets the lists at the cap
            equal = min(equal, args.static_nfe_cap)
        static_row(f"uniform-{equal}", "uniform", equal, full)
        if equal <= steps:
            static_row(f"{args.best_builtin[solver]}-{equal}", args.best_builtin[solver], equal, full)
        learned = _learned_entry(model.name, solver, equal)
        if learned is not None:
            static_row(f"{learned}", learned, equal, full)
        bar.update(1)


def _section(solver: str, steps: int) -> str:
    return f"{solver}/{steps}"


def summarise(rows: dict[str, Any], steps: int, reference_steps: list[int], nfe_goal: float = NFE_GOAL,
              fid_tolerance: float = FID_TOLERANCE) -> dict[str, Any]:
    """Per adaptive row: NFE and FID against the full runs, the best static row of equal NFE and the goals.

    Args:
        rows: the rows of one solver's section of a results file.
        steps: the full run's step count.
        reference_steps: the step counts of the longer uniform runs (rows `full-N`).
        nfe_goal: the goal's fraction of NFE saved against the full run.
        fid_tolerance: the goal's largest FID increase in %.
    """
    full = rows["full"]
    references = {"full": full, **{f"full-{s}": rows[f"full-{s}"] for s in reference_steps}}
    statics = {k: v for k, v in rows.items() if v.get("kind") == "static" and k not in references}
    table: dict[str, Any] = {}
    for key, row in rows.items():
        if row.get("kind") not in ("monitor", "steering", "adaptive") or "skipped" in row:
            continue
        equal = max(1, round(row["nfe_mean"]))
        rivals = {k: v["fid"] for k, v in statics.items() if v["steps"] == equal}
        cheaper = not rivals  # above --static-nfe-cap: the rivals are the cheaper static lists
        if cheaper:
            rivals = {k: v["fid"] for k, v in statics.items() if v["steps"] < equal}
        best = min(rivals, key=rivals.__getitem__) if rivals else None  # none yet: a run stopped before its rivals
        entry: dict[str, Any] = {
            "kind": row["kind"], "nfe_mean": row["nfe_mean"], "fid": row["fid"], "kid": row["kid"],
            "wall_s": row["wall_s"], "monitor_s": row["monitor_s"], "psnr_to_full": row["psnr_of_mean_mse"],
            "static_rivals": rivals, "best_static": best, "rival_at_fewer_nfe": cheaper,
            "fid_vs_best_static_pct": None if best is None else (row["fid"] / rivals[best] - 1) * 100,
            "beats_best_static_by_5pct": best is not None and row["fid"] <= 0.95 * rivals[best],
            "wall_vs_best_static": None if best is None else row["wall_s"] / statics[best]["wall_s"]}
        for ref_key, ref in references.items():
            nfe_ratio = ref["nfe_mean"] / row["nfe_mean"]
            speedup = ref["wall_s"] / row["wall_s"]
            entry[ref_key] = {"nfe_reduction_pct": (1 - row["nfe_mean"] / ref["nfe_mean"]) * 100,
                              "fid_change_pct": (row["fid"] / ref["fid"] - 1) * 100, "speedup": speedup,
                              "nfe_ratio": nfe_ratio, "speedup_over_nfe_ratio": speedup / nfe_ratio}
        vs_full = entry["full"]
        entry["meets_nfe_goal"] = (vs_full["nfe_reduction_pct"] >= 100 * nfe_goal
                                   and vs_full["fid_change_pct"] <= fid_tolerance)
        table[key] = entry
    monitors = [k for k, v in table.items() if v["kind"] in ("monitor", "steering")]
    return {"full_fid": full["fid"], "full_wall_s": full["wall_s"],
            "references": {k: {"fid": v["fid"], "nfe_mean": v["nfe_mean"], "wall_s": v["wall_s"]}
                           for k, v in references.items()},
            "rows": table,
            "goal_equal_nfe": ">= 5 % lower FID than the best static schedule of equal mean NFE (an x̂0 monitor)",
            "goal_equal_nfe_met_by": sorted(k for k in monitors if table[k]["beats_best_static_by_5pct"]),
            "goal_nfe": f">= {100 * nfe_goal:.0f} % fewer NFE than the full {steps}-step run at <= "
                        f"{fid_tolerance:g} % FID increase",
            "goal_nfe_met_by": sorted(k for k, v in table.items() if v["meets_nfe_goal"]),
            "skipped": {k: v["skipped"] for k, v in rows.items() if "skipped" in v}}


def markdown(path: Path) -> str:
    """The tables of a results file, one per solver section: each adaptive row against its best static rival of
    equal NFE and the full runs (the reference runs are those on file; calibrated thresholds in a row's name to 4
    significant digits; wall times: time_early_exit.py).

    Args:
        path: a bench_early_exit.py results file.
    """
    tables = []
    for section, rows in json.loads(path.read_text())["rows"].items():
        solver, steps = section.split("/")
        reference_steps = [int(key.removeprefix("full-")) for key in rows if key.startswith("full-")]
        summary = summarise(rows, int(steps), reference_steps)
        longer = [k for k in summary["references"] if k != "full"]
        header = [f"{section} row", "NFE", "FID", "KID", "best static at that NFE", "FID vs it", "NFE vs full",
                  "FID vs full", *(f"{what} vs {k}" for k in longer for what in ("NFE", "FID")), "PSNR to full"]
        table = []
        for key, r in sorted(summary["rows"].items(), key=lambda kv: kv[1]["nfe_mean"]):
            best, versus = "not measured", ""
            if r["best_static"] is not None:
                best = f"{r['best_static']}: {r['static_rivals'][r['best_static']]:.2f}"
                best += " (fewer NFE)" if r.get("rival_at_fewer_nfe") else ""
                versus = f"{r['fid_vs_best_static_pct']:+.1f} %"
            mark = "**" if r["beats_best_static_by_5pct"] else ""
            table.append([f"`{round_decimals(key)}`", f"{r['nfe_mean']:.1f}", f"{mark}{r['fid']:.2f}{mark}",
                          f"{r['kid']:.3f}", best, versus, *(f"{v:+.1f} %" for k in ("full", *longer)
                                    for v in (-r[k]["nfe_reduction_pct"], r[k]["fid_change_pct"])),
                          f"{r['psnr_to_full']:.1f}" if r["psnr_to_full"] is not None else "—"])
        tables.append(markdown_table(header, table))
    return "\n\n".join(tables)


def print_summary(solver: str, summary: dict[str, Any]) -> None:
    refs = ", ".join(f"{k} FID {v['fid']:.3f} ({v['nfe_mean']:.0f} NFE, {v['wall_s']:.0f} s)"
                     for k, v in summary["references"].items())
    print(f"\n== {solver}: {refs}")
    print(f"{'row':<44}{'NFE':>6}{'FID':>8}{'best static':>24}{'vs static':>10}{'-NFE%':>7}{'dFID%':>7}"
          f"{'speedup':>8}{'/NFE':>6}{'mon s':>7}")
    for key, r in summary["rows"].items():
        best, versus = "not measured", "  "
        if r["best_static"] is not None:
            best = f"{r['best_static']} {r['static_rivals'][r['best_static']]:.3f}"
            versus = f"{r['fid_vs_best_static_pct']:>+9.1f}%"
        f = r["full"]
        print(f"{key[:43]:<44}{r['nfe_mean']:>6.1f}{r['fid']:>8.3f}{best:>24}{versus:>10}"
              f"{f['nfe_reduction_pct']:>7.1f}{f['fid_change_pct']:>+7.1f}{f['speedup']:>8.2f}"
              f"{f['speedup_over_nfe_ratio']:>6.2f}{r['monitor_s']:>7.1f}")
    for key, why in summary["skipped"].items():
        print(f"{key:<44}skipped: {why.splitlines()[0][:150]}")
    print(f"goal ({summary['goal_equal_nfe']}): {', '.join(summary['goal_equal_nfe_met_by']) or 'none'}")
    print(f"goal ({summary['goal_nfe']}): {', '.join(summary['goal_nfe_met_by']) or 'none'}")


def write_defaults(model: LoadedModel, report: Report, args: argparse.Namespace) -> None:
    """The DDIM calibration at the first --targets entry (a PSNR) as the package's defaults for --steps."""
    target = args.targets[0]
    if target[0] != "psnr":
        raise SystemExit(f"--write-defaults: the first --targets entry must be psnr:DB, not {target}")
    data = load_calibrated_defaults()
    entry = data["models"].setdefault(model.name, {"weights_sha256": model.weights_sha256, "steps": {}})
    if entry.get("weights_sha256") != model.weights_sha256:
        entry = data["models"][model.name] = {"weights_sha256": model.weights_sha256, "steps": {}}
    monitors = {}
    for key, cal in report.data["calibration"].get(_section("ddim", args.steps), {}).items():
        if key.endswith(f"@{_target_label(target)}") and cal.get("calibrated") and cal["name"] not in BUDGET_NAMES:
            monitors[cal["name"]] = default_entry_of(cal)
    entry["steps"][str(args.steps)] = {
        "policy": "uniform", "solver": "ddim", "eta": 0.0, "network_rows": args.network_rows,
        "calibration_seeds": args.calibration_seeds, "heldout_seeds": args.heldout_seeds,
        "samples_per_seed": args.samples_per_seed, "command": command(), "monitors": monitors,
    }
    data["format"] = DEFAULTS_FORMAT
    DEFAULTS_PATH.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote calibrated defaults for {model.name} at {args.steps} steps ({target[1]:g} dB) to {DEFAULTS_PATH}")


# --------------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True, help="results file (resumed if it exists)")
    parser.add_argument("--n", type=int, default=2000, help="evaluation samples (> 128 for FID)")
    parser.add_argument("--model", default="embedded", choices=["embedded", "embedded-t2i"],
                        help="the embedded pixel model, or the embedded text-to-image model (scored on decoded images)")
    parser.add_argument("--prompts", type=Path, default=None,
                        help="embedded-t2i: one prompt per line, sample i takes prompt i mod P (default: 'a photo of "
                             "a NAME' for the ten classes)")
    parser.add_argument("--guidance-scale", type=float, default=3.0, help="embedded-t2i: classifier-free guidance")
    parser.add_argument("--steps", type=int, default=20, help="steps of the full run the monitors watch")
    parser.add_argument("--reference-steps", type=int, nargs="*", default=[50],
                        help="longer uniform runs reported beside the full run")
    parser.add_argument("--solvers", nargs="+", choices=list(SOLVERS), default=["ddim", "dpmpp-2m"])
    parser.add_argument("--best-builtin", nargs="*", default=["ddim:leading", "dpmpp-2m:karras", "unipc:karras"],
                        help="SOLVER:POLICY, the built-in static competitor per solver (default: the best built-in "
                             "at 20 steps in experiments/results/bench_quality.json)")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed")
    parser.add_argument("--calibration-seeds", type=int, nargs="+", default=[1000])
    parser.add_argument("--heldout-seeds", type=int, nargs="+", default=[2000])
    parser.add_argument("--samples-per-seed", type=int, default=256, help="calibration samples per seed")
    parser.add_argument("--targets", type=_parse_target, nargs="+", default=[("psnr", 30.0)],
                        help="calibration targets, each a row per monitor: psnr:DB (PSNR of the mean MSE to the full "
                             "run), fid:PCT or kid:PCT (at most PCT %% above the full run's, x̂0-priced)")
    parser.add_argument("--monitors", nargs="*", default=DEFAULT_MONITORS,
                        help="monitor specs; without a threshold they are calibrated (default: %(default)s)")
    parser.add_argument("--finish", nargs="+", default=["tail"],
                        help="how a monitored sample ends (x0, tail, tail:K[:t|logsnr]); each makes a row")
    parser.add_argument("--steering", nargs="*", default=["auto"],
                        help="steering monitor specs on steered:STEPS (auto: steer-x0-l2 at the 25th/75th "
                             "percentile of its score on the calibration trace; nfe:N: those percentiles scaled "
                             "to a mean NFE of N on the calibration seeds, monitors.calibrate_steering)")
    parser.add_argument("--static-nfe-cap", type=int, default=None,
                        help="no static rival above this NFE: a row costing more is compared with the lists at the cap")
    parser.add_argument("--adaptive-tolerances", type=float, nargs="*", default=[0.012],
                        help="tolerances of the runtime-adaptive step-size control rows (none: skip them)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--network-rows", type=int, default=8,
                        help="fixed network chunk (bitwise batch invariance: online exits equal the simulation)")
    parser.add_argument("--nfe-goal", type=float, default=NFE_GOAL,
                        help="goal: this fraction fewer NFE than the full run")
    parser.add_argument("--fid-tolerance", type=float, default=FID_TOLERANCE, help="goal: at most this %% FID increase")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--calibrate-only", action="store_true", help="calibrate, skip the evaluation runs")
    parser.add_argument("--write-defaults", action="store_true",
                        help=f"store the DDIM thresholds as package defaults ({DEFAULTS_PATH.name})")
    parser.add_argument("--restart", action="store_true", help="discard the rows already in --json")
    parser.add_argument("--markdown", action="store_true", help="print the README tables of --json and exit")
    args = parser.parse_args()
    if args.markdown:  # summarised from the rows on file, so a stopped run prints what it measured
        print(markdown(args.json))
        return
    if not args.calibrate_only and args.n <= 128:
        parser.error(f"--n: {args.n} is not above 128, the feature dimension FID needs")
    if args.seed in args.calibration_seeds + args.heldout_seeds:
        parser.error(f"--seed: {args.seed} is also a calibration or held-out seed; evaluate on separate seeds")
    for spec in args.monitors:
        if _name(spec) not in MONITORS:
            parser.error(f"--monitors: {spec!r} is not one of {', '.join(MONITORS)} (optionally :THRESHOLD)")
    for finish in args.finish:
        try:
            parse_finish(finish)
        except FieldError as e:
            parser.error(f"--finish: {e}")
    try:
        builtin = dict(item.split(":", 1) for item in args.best_builtin)
    except ValueError:
        parser.error(f"--best-builtin: {args.best_builtin} is not a list of SOLVER:POLICY")
    for solver in args.solvers:
        if builtin.get(solver) not in STATIC_POLICIES:
            parser.error(f"--best-builtin: solver {solver} needs SOLVER:POLICY with POLICY one of "
                         f"{', '.join(STATIC_POLICIES)}")
    args.best_builtin = builtin
    device = pick_device(args.device)

    # what every row depends on; rows are keyed by their own spec, so more monitors, targets, finishes, steering
    # specs, tolerances, reference runs or solvers can be added to a results file later
    settings = {k: getattr(args, k) for k in ("model", "n", "steps", "seed", "calibration_seeds", "heldout_seeds",
                                              "samples_per_seed", "batch_size", "network_rows", "best_builtin")}
    if args.model == "embedded-t2i":
        settings.update(prompts=str(args.prompts), guidance_scale=args.guidance_scale)
    report = Report(args.json, settings, args.restart)
    report.data["environment"] = environment(device)
    model = load_model(args.model, device=device)
    if model.text_encoder is not None:
        prompts = read_prompts(args.prompts) if args.prompts else tuple(
            f"a photo of a {name}" for name in ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                                                "sneaker", "bag", "ankle boot"))
        model = model.with_conditions(Conditions(prompts=prompts, guidance_scale=args.guidance_scale))
    adapter = model.adapter(network_rows=args.network_rows)
    extractor = EmbeddedFeatureExtractor(device=device)
    targets = ", ".join(_target_label(t) for t in args.targets)
    print(f"device={device} n={args.n} steps={args.steps} solvers={args.solvers} targets {targets}, "
          f"calibration seeds {args.calibration_seeds} x {args.samples_per_seed}, held-out {args.heldout_seeds}, "
          f"evaluation seed {args.seed}")

    calibrations = sum(1 if _has_threshold(s) else len(args.targets) for s in args.monitors)
    adaptive = calibrations * len(args.finish) + len(args.steering) + len(args.adaptive_tolerances)
    per_solver = calibrations + (0 if args.calibrate_only else 1 + len(args.reference_steps) + 2 * adaptive)
    with tqdm(total=per_solver * len(args.solvers), desc="bench_early_exit", unit="task") as bar:
        for solver in args.solvers:
            calibration, steering = calibrate_all(model, adapter, solver, args, report, extractor, bar)
            if not args.calibrate_only:
                evaluate_solver(model, adapter, solver, calibration, steering, args, report, extractor, device, bar)
                section = _section(solver, args.steps)
                report.data["summary"][section] = summarise(report.data["rows"][section], args.steps,
                                                            args.reference_steps, args.nfe_goal, args.fid_tolerance)
                report.save()

    for solver in args.solvers:
        section = _section(solver, args.steps)
        print(f"\n-- calibration, {solver}, {args.steps} steps (calibration / held-out: NFE, PSNR of mean MSE)")
        for key, cal in report.data["calibration"].get(section, {}).items():
            if cal.get("calibrated"):
                print(f"   {key:<24}{cal['spec']:<34} NFE {cal['calibration']['nfe_mean']:5.1f}"
                      f" / {cal['heldout']['nfe_mean']:5.1f}   PSNR {cal['calibration']['psnr']:5.1f}"
                      f" / {cal['heldout']['psnr']:5.1f}{_distribution_text(cal)}"
                      f"{'' if cal['met_target'] else '   (target not met)'}"
                      f"{'' if cal['heldout_met_target'] else '   (held-out: missed)'}")
            elif key.startswith("steering "):
                nfe = (f" NFE {cal['calibration_nfe_mean']:5.1f} / {cal['heldout_nfe_mean']:5.1f}"
                       f" (target {cal['target_nfe']:g})" if "target_nfe" in cal else "")
                print(f"   {key:<24}{cal['spec']}{nfe}")
            else:
                print(f"   {key:<24}{cal.get('skipped', cal.get('reason', ''))[:150]}")
        if not args.calibrate_only:
            print_summary(solver, report.data["summary"][section])
    report.data["environment"]["loadavg_end"] = os.getloadavg()
    report.save()
    if args.write_defaults:
        write_defaults(model, report, args)
    print(f"\ncommand: {command()}\nwrote {args.json}")


if __name__ == "__main__":
    main()
