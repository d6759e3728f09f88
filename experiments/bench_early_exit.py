"""Early-exit monitors against the full run on the embedded model, side by side on the same seeds, in one run.

For each step count (default 50, uniform DDIM, η = 0):
  1. calibration: record the full run's x̂0 trace once on calibration seeds and once on held-out seeds (both
     disjoint from the evaluation seed), and calibrate each monitor's threshold against the fidelity target
     (`adaptive_sampler.monitors.calibrate_threshold`: PSNR of the mean squared error to the full run, by
     default 30 dB); `max-nfe` is calibrated the same way and is the baseline "stop every sample after N steps";
  2. evaluation on n samples of the evaluation seed: the full run, then each calibrated monitor online
     (`sample(..., monitor=monitor)`, exited samples leave the network batch), then a plain DDIM run with 30 %
     fewer steps (the competitor that needs no monitor), then the runtime-adaptive step-size control
     (`sample(adapter, StepSizeControl(tol), ...)` at each --adaptive-tolerances value and with each
     --adaptive-solvers solver; its NFE includes rejected steps) and, for a multistep solver, the static run of
     that solver over uniform timesteps at the same mean NFE (rounded), then the full run again (its two timings
     bracket the others; the speed-up uses their mean).

Per row: mean NFE (and its reduction), FID/KID/precision/recall in the embedded feature space (and the FID change
vs the full run), fidelity to the full run (PSNR of the mean MSE, mean per-sample PSNR, 10th-percentile PSNR,
SSIM, feature distance), wall time with the monitor's own cost included (and that cost alone), and the wall-clock
speed-up over the full run. A monitor "pays for itself" when its wall time beats the full run; the goal of the
issue is >= 30 % fewer network evaluations at <= 5 % FID increase for the best monitor, and the summary says
whether any monitor reached it — and whether fewer plain DDIM steps did as well. LPIPS is skipped (with the
reason) when its backbone weights are not in the torch hub cache; `deadline` is a wall-clock budget and is only
run when given with its seconds (e.g. `deadline:0.5`). Rows are written to the JSON as they finish and reused when
the same command is run again (`--restart` to discard them); the full run's samples are kept next to the JSON so
that a resumed run can still compute fidelity.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench_early_exit.py --json experiments/results/bench_early_exit.json
    # smoke: --n 200 --steps 20 --samples-per-seed 32
    # calibrate only and ship the thresholds as package defaults:
    .venv/bin/python experiments/bench_early_exit.py --json runs/calib.json --calibrate-only --write-defaults \\
        --steps 20 50 --samples-per-seed 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from adaptive_sampler.metrics import EmbeddedFeatureExtractor, fidelity
from adaptive_sampler.metrics.evaluation import score_samples
from adaptive_sampler.models import LoadedModel, load_model
from adaptive_sampler.monitors import (
    DEFAULTS_PATH,
    MONITORS,
    LPIPSWeightsMissingError,
    Monitor,
    load_calibrated_defaults,
    monitor_from_spec,
)
from adaptive_sampler.monitors.calibration import X0Trace, calibrate_threshold, psnr_of, record_x0_trace
from adaptive_sampler.monitors.spec import BUDGET_NAMES, DEFAULTS_FORMAT
from adaptive_sampler.policies.builtin import Uniform
from adaptive_sampler.policies.step_size_control import StepSizeControl
from adaptive_sampler.sampler import sample
from adaptive_sampler.solvers import SOLVERS, make_solver

DEFAULT_MONITORS = ["x0-l2", "ssim", "haarpsi", "gmsd", "features", "sharpness", "lpips", "max-nfe"]


# ------------------------------------------------------------------------------------------------------ helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedCallback:
    """Wraps a monitor (its call, `reset` and `keep`) and adds up the time spent inside it (synchronised on GPUs)."""

    def __init__(self, monitor: Monitor, device: torch.device) -> None:
        self.monitor, self.device, self.seconds = monitor, device, 0.0

    def _timed(self, call: Callable[[], Any]) -> Any:
        _sync(self.device)
        start = time.perf_counter()
        out = call()
        _sync(self.device)
        self.seconds += time.perf_counter() - start
        return out

    def __call__(self, info: Any) -> Any:
        return self._timed(lambda: self.monitor(info))

    def reset(self) -> None:
        self._timed(self.monitor.reset)

    def keep(self, rows: torch.Tensor) -> None:
        self._timed(lambda: self.monitor.keep(rows))


def _name(spec: str) -> str:
    return spec.split(",")[0].split(":")[0].strip()


def _has_threshold(spec: str) -> bool:
    return ":" in spec.split(",")[0]


def _command() -> str:
    prefix = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    return prefix + " ".join([Path(sys.executable).name, *sys.argv])


def _environment(device: torch.device) -> dict[str, Any]:
    return {"command": _command(), "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "cpu_count": os.cpu_count(), "torch_num_threads": torch.get_num_threads(),
            "loadavg_start": os.getloadavg()}


class Report:
    """The JSON file: settings, calibration results and evaluation rows, written after every finished task."""

    def __init__(self, path: Path, settings: dict[str, Any], restart: bool) -> None:
        self.path = path
        data: dict[str, Any] = {}
        if path.is_file() and not restart:
            data = json.loads(path.read_text())
            if data.get("settings") != settings:
                raise SystemExit(f"--json: {path} holds rows of other settings ({data.get('settings')}); use "
                                 "another file or --restart")
        self.data = {"settings": settings, "calibration": {}, "rows": {}, "summary": {}, **data}
        self.data["settings"] = settings

    def get(self, section: str, steps: int, key: str) -> dict[str, Any] | None:
        return self.data[section].get(str(steps), {}).get(key)

    def put(self, section: str, steps: int, key: str, value: dict[str, Any]) -> None:
        self.data[section].setdefault(str(steps), {})[key] = value
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.replace(self.path)


# -------------------------------------------------------------------------------------------------- calibration
def calibrate_all(model: LoadedModel, adapter: Any, steps: int, args: argparse.Namespace, report: Report,
                  extractor: EmbeddedFeatureExtractor, bar: tqdm) -> dict[str, dict[str, Any]]:
    timesteps = Uniform().timesteps(steps, adapter.schedule)
    traces: dict[str, X0Trace] = {}

    def trace(which: str) -> X0Trace:
        if which not in traces:
            seeds = args.calibration_seeds if which == "calibration" else args.heldout_seeds
            bar.set_postfix_str(f"{steps} steps: recording {which} traces")
            traces[which] = record_x0_trace(adapter, model.sample_shape, timesteps, seeds, args.samples_per_seed,
                                            batch_size=args.batch_size)
        return traces[which]

    results: dict[str, dict[str, Any]] = {}
    for spec in args.monitors:
        done = report.get("calibration", steps, spec)
        if done is None:
            bar.set_postfix_str(f"{steps} steps: calibrating {spec}")
            if _has_threshold(spec):
                done = {"spec": spec, "calibrated": False, "reason": "threshold given on the command line"}
            elif not MONITORS[_name(spec)].calibratable:
                done = {"spec": spec, "skipped": f"{_name(spec)} is a wall-clock budget: give its seconds, e.g. "
                                                 f"{_name(spec)}:0.5"}
            else:
                try:
                    start = time.perf_counter()
                    result = calibrate_threshold(
                        adapter, model.sample_shape, timesteps, spec, target_psnr=args.target_psnr,
                        target_feature_distance=args.target_feature_distance,
                        calibration_seeds=args.calibration_seeds, heldout_seeds=args.heldout_seeds,
                        samples_per_seed=args.samples_per_seed, batch_size=args.batch_size,
                        feature_extractor=extractor, calibration_trace=trace("calibration"),
                        heldout_trace=trace("heldout"))
                    done = {"spec": result.monitor, "calibrated": True, "seconds": time.perf_counter() - start,
                            **result.to_json()}
                except LPIPSWeightsMissingError as e:
                    done = {"spec": spec, "skipped": f"{type(e).__name__}: {e}"}
            report.put("calibration", steps, spec, done)
        results[spec] = done
        bar.update(1)
    return results


# --------------------------------------------------------------------------------------------------- evaluation
def _row(samples: torch.Tensor, nfe: torch.Tensor, wall_s: float, full: torch.Tensor | None,
         extractor: EmbeddedFeatureExtractor, monitor_s: float = 0.0) -> dict[str, Any]:
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


def evaluate_all(model: LoadedModel, adapter: Any, steps: int, calibration: dict[str, dict[str, Any]],
                 args: argparse.Namespace, report: Report, extractor: EmbeddedFeatureExtractor, device: torch.device,
                 bar: tqdm) -> None:
    timesteps = Uniform().timesteps(steps, adapter.schedule)
    shape = model.sample_shape
    full_file = args.json.with_name(f"{args.json.stem}.full-{steps}.safetensors")

    def wall_timed(draw: Callable[[], Any]) -> tuple[Any, float]:
        """draw()'s result and its wall time, synchronised on GPUs."""
        _sync(device)
        start = time.perf_counter()
        result = draw()
        _sync(device)
        return result, time.perf_counter() - start

    def run(monitor: Any = None, ts: torch.Tensor = timesteps) -> tuple[Any, float]:
        return wall_timed(lambda: sample(adapter, ts, shape, args.n, batch_size=args.batch_size, seed=args.seed,
                                         monitor=monitor))

    # the full run: its samples are the fidelity reference of every other row
    full_row = report.get("rows", steps, "full")
    if full_row is None or not full_file.is_file():
        bar.set_postfix_str(f"{steps} steps: full run")
        result, wall = run()
        save_file({"samples": result.samples.contiguous()}, str(full_file))
        full_row = {"kind": "full", **_row(result.samples, result.nfe, wall, None, extractor), "resumed": False}
        report.put("rows", steps, "full", full_row)
    full = load_file(str(full_file))["samples"]
    bar.update(1)

    for spec in args.monitors:
        cal = calibration[spec]
        if report.get("rows", steps, spec) is None:
            bar.set_postfix_str(f"{steps} steps: {spec}")
            if "skipped" in cal:
                row: dict[str, Any] = {"kind": "monitor", "skipped": cal["skipped"]}
            else:
                monitor = monitor_from_spec(cal["spec"])
                timed = TimedCallback(monitor, device)
                result, wall = run(timed)
                row = {"kind": "monitor", "spec": cal["spec"], "calibrated": cal.get("calibrated", False),
                       **_row(result.samples, result.nfe, wall, full, extractor, timed.seconds)}
            report.put("rows", steps, spec, row)
        bar.update(1)

    fewer = max(1, round(steps * (1 - args.nfe_goal)))
    key = f"ddim-{fewer}"
    if report.get("rows", steps, key) is None:
        bar.set_postfix_str(f"{steps} steps: plain DDIM, {fewer} steps")
        result, wall = run(None, Uniform().timesteps(fewer, adapter.schedule))
        report.put("rows", steps, key, {"kind": "fewer-steps", "spec": f"uniform DDIM, {fewer} steps",
                                        **_row(result.samples, result.nfe, wall, full, extractor)})
    bar.update(1)

    for solver in args.adaptive_solvers:
        for tolerance in args.adaptive_tolerances:
            policy = StepSizeControl(tolerance=tolerance)
            key = policy.name if solver == "ddim" else f"{policy.name}/{solver}"
            if report.get("rows", steps, key) is None:
                bar.set_postfix_str(f"{steps} steps: {key}")
                adaptive, wall = wall_timed(lambda policy=policy, solver=solver: sample(
                    adapter, policy, shape, args.n, batch_size=args.batch_size, seed=args.seed,
                    solver=make_solver(solver)))
                report.put("rows", steps, key, {
                    "kind": "adaptive", "spec": f"step-size control, tolerance {tolerance:g}, {solver}",
                    "solver": solver, "rejected_mean": float(adaptive.rejected.double().mean()),
                    **_row(adaptive.samples, adaptive.nfe, wall, full, extractor)})
            bar.update(1)
            if solver == "ddim":
                continue
            # the static competitor: the same solver over uniform timesteps, at the adaptive row's mean NFE
            equal = max(1, round(report.get("rows", steps, key)["nfe_mean"]))
            static_key = f"{solver}-{equal}"
            if report.get("rows", steps, static_key) is None:
                bar.set_postfix_str(f"{steps} steps: {static_key}")
                result, wall = wall_timed(lambda equal=equal, solver=solver: sample(
                    adapter, Uniform().timesteps(equal, adapter.schedule), shape, args.n,
                    batch_size=args.batch_size, seed=args.seed, solver=make_solver(solver)))
                report.put("rows", steps, static_key, {
                    "kind": "equal-nfe", "spec": f"uniform {solver}, {equal} steps", "solver": solver,
                    "versus": key, **_row(result.samples, result.nfe, wall, full, extractor)})
            bar.update(1)

    if report.get("rows", steps, "full-again") is None:
        bar.set_postfix_str(f"{steps} steps: full run again (timing)")
        result, wall = run()
        report.put("rows", steps, "full-again", {"kind": "timing", "wall_s": wall,
                                                 "same_samples": bool(torch.equal(result.samples, full))})
    bar.update(1)


def summarise(steps: int, report: Report, args: argparse.Namespace) -> dict[str, Any]:
    rows = report.data["rows"][str(steps)]
    full = rows["full"]
    full_walls = [full["wall_s"], rows["full-again"]["wall_s"]]
    full_wall = statistics.mean(full_walls)
    table = {}
    for key, row in rows.items():
        if key in ("full", "full-again") or "skipped" in row:
            continue
        fid_increase = (row["fid"] / full["fid"] - 1) * 100
        nfe_reduction = (1 - row["nfe_mean"] / full["nfe_mean"]) * 100
        speedup = full_wall / row["wall_s"]
        table[key] = {**row, "nfe_reduction_pct": nfe_reduction, "fid_increase_pct": fid_increase,
                      "speedup_vs_full": speedup, "ideal_speedup_from_nfe": full["nfe_mean"] / row["nfe_mean"],
                      "monitor_share_pct": 100 * row["monitor_s"] / row["wall_s"],
                      "pays_for_itself": speedup > 1.0,
                      "meets_goal": nfe_reduction >= 100 * args.nfe_goal and fid_increase <= args.fid_tolerance}
    monitors = {k: v for k, v in table.items() if v["kind"] == "monitor"}
    best = max(monitors, key=lambda k: (monitors[k]["meets_goal"], monitors[k]["nfe_reduction_pct"]
                                        - 100 * max(0.0, monitors[k]["fid_increase_pct"] - args.fid_tolerance)),
               default=None)
    return {"full_wall_s": full_walls, "full_wall_drift_pct": (full_walls[1] / full_walls[0] - 1) * 100,
            "full_fid": full["fid"], "rows": table, "best_monitor": best,
            "goal": f">= {100 * args.nfe_goal:.0f} % fewer NFE at <= {args.fid_tolerance:.0f} % FID increase",
            "goal_met_by": sorted(k for k, v in monitors.items() if v["meets_goal"]),
            "goal_met_by_fewer_steps": sorted(k for k, v in table.items() if v["kind"] == "fewer-steps"
                                              and v["meets_goal"]),
            "goal_met_by_adaptive": sorted(k for k, v in table.items() if v["kind"] == "adaptive" and v["meets_goal"]),
            "adaptive_vs_static_at_equal_nfe": {
                v["versus"]: {"static": k, "adaptive_fid": table[v["versus"]]["fid"], "static_fid": v["fid"],
                              "fid_ratio_adaptive_over_static": table[v["versus"]]["fid"] / v["fid"],
                              "adaptive_nfe": table[v["versus"]]["nfe_mean"], "static_nfe": v["nfe_mean"],
                              "wall_ratio_adaptive_over_static": table[v["versus"]]["wall_s"] / v["wall_s"]}
                for k, v in table.items() if v["kind"] == "equal-nfe"},
            "skipped": {k: v["skipped"] for k, v in rows.items() if "skipped" in v}}


def print_summary(steps: int, summary: dict[str, Any], calibration: dict[str, dict[str, Any]]) -> None:
    print(f"\n== {steps} steps: full run FID {summary['full_fid']:.3f}, wall {summary['full_wall_s'][0]:.1f} s / "
          f"{summary['full_wall_s'][1]:.1f} s (before / after; drift {summary['full_wall_drift_pct']:+.1f} %)")
    print(f"{'row':<22}{'threshold':>11}{'NFE':>7}{'-NFE%':>7}{'FID':>8}{'dFID%':>8}{'PSNR':>7}{'p10':>6}"
          f"{'featd':>7}{'wall s':>8}{'mon s':>7}{'speedup':>8}  goal")
    for key, r in summary["rows"].items():
        cal = calibration.get(key, {})
        threshold = f"{cal['threshold']:.4g}" if cal.get("calibrated") else ("given" if r["kind"] == "monitor"
                                                                               else "-")
        print(f"{key:<22}{threshold:>11}{r['nfe_mean']:>7.1f}{r['nfe_reduction_pct']:>7.1f}{r['fid']:>8.3f}"
              f"{r['fid_increase_pct']:>+8.1f}{r['psnr_of_mean_mse']:>7.1f}{r['psnr_p10']:>6.1f}"
              f"{r['feature_distance']:>7.2f}{r['wall_s']:>8.1f}{r['monitor_s']:>7.2f}{r['speedup_vs_full']:>8.2f}"
              f"  {'MET' if r['meets_goal'] else '-'}{'' if r['pays_for_itself'] else '  (slower than full)'}")
    for key, why in summary["skipped"].items():
        print(f"{key:<22}skipped: {why.splitlines()[0][:160]}")
    print(f"goal ({summary['goal']}): monitors meeting it: {', '.join(summary['goal_met_by']) or 'none'}; "
          f"best monitor: {summary['best_monitor']}; plain DDIM with fewer steps meeting it: "
          f"{', '.join(summary['goal_met_by_fewer_steps']) or 'none'}; adaptive step allocation meeting it: "
          f"{', '.join(summary['goal_met_by_adaptive']) or 'none'}")
    for adaptive, cmp in summary["adaptive_vs_static_at_equal_nfe"].items():
        print(f"{adaptive} (NFE {cmp['adaptive_nfe']:.1f}) vs {cmp['static']} (NFE {cmp['static_nfe']:.0f}): FID "
              f"{cmp['adaptive_fid']:.3f} vs {cmp['static_fid']:.3f}, ratio {cmp['fid_ratio_adaptive_over_static']:.3f}"
              f"; wall-time ratio {cmp['wall_ratio_adaptive_over_static']:.2f}")


def write_defaults(model: LoadedModel, report: Report, args: argparse.Namespace) -> None:
    data = load_calibrated_defaults()
    entry = data["models"].setdefault(model.name, {"weights_sha256": model.weights_sha256, "steps": {}})
    if entry.get("weights_sha256") != model.weights_sha256:
        entry = data["models"][model.name] = {"weights_sha256": model.weights_sha256, "steps": {}}
    for steps in args.steps:
        monitors = {}
        for cal in report.data["calibration"].get(str(steps), {}).values():
            if cal.get("calibrated") and cal["name"] not in BUDGET_NAMES:
                monitors[cal["name"]] = {
                    "threshold": cal["threshold"], "guardrails": cal["guardrails"],
                    "target_psnr": cal["target_psnr"], "target_feature_distance": cal["target_feature_distance"],
                    "calibration_nfe_mean": cal["calibration"]["nfe_mean"],
                    "heldout_nfe_mean": cal["heldout"]["nfe_mean"], "heldout_psnr": cal["heldout"]["psnr"],
                    "heldout_psnr_p10": cal["heldout"]["psnr_p10"],
                    "heldout_feature_distance": cal["heldout"]["feature_distance"],
                }
        entry["steps"][str(steps)] = {
            "policy": "uniform", "solver": "ddim", "eta": 0.0, "network_rows": args.network_rows,
            "calibration_seeds": args.calibration_seeds, "heldout_seeds": args.heldout_seeds,
            "samples_per_seed": args.samples_per_seed, "command": _command(), "monitors": monitors,
        }
    data["format"] = DEFAULTS_FORMAT
    DEFAULTS_PATH.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote calibrated defaults for {model.name} at {', '.join(map(str, args.steps))} steps to {DEFAULTS_PATH}")


# --------------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True, help="results file (resumed if it exists)")
    parser.add_argument("--n", type=int, default=2000, help="evaluation samples (> 128 for FID)")
    parser.add_argument("--steps", type=int, nargs="+", default=[50], help="uniform DDIM step counts")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed")
    parser.add_argument("--calibration-seeds", type=int, nargs="+", default=[1000])
    parser.add_argument("--heldout-seeds", type=int, nargs="+", default=[2000])
    parser.add_argument("--samples-per-seed", type=int, default=256, help="calibration samples per seed")
    parser.add_argument("--target-psnr", type=float, default=None,
                        help="fidelity target: PSNR (dB) of the mean MSE to the full run (default 30)")
    parser.add_argument("--target-feature-distance", type=float, default=None,
                        help="fidelity target instead: mean embedded-feature distance to the full run")
    parser.add_argument("--monitors", nargs="*", default=DEFAULT_MONITORS,
                        help="monitor specs; without a threshold they are calibrated (default: %(default)s)")
    parser.add_argument("--adaptive-tolerances", type=float, nargs="*", default=[0.002, 0.005, 0.01],
                        help="tolerances of the runtime-adaptive step-size control rows (none: skip them)")
    parser.add_argument("--adaptive-solvers", nargs="+", choices=list(SOLVERS), default=["ddim"],
                        help="solvers of the adaptive rows; a multistep one also gets its static equal-NFE row")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--network-rows", type=int, default=8,
                        help="fixed network chunk (bitwise batch invariance: online exits equal the simulation)")
    parser.add_argument("--nfe-goal", type=float, default=0.30, help="goal: this fraction fewer NFE")
    parser.add_argument("--fid-tolerance", type=float, default=5.0, help="goal: at most this %% FID increase")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--calibrate-only", action="store_true", help="calibrate, skip the evaluation runs")
    parser.add_argument("--write-defaults", action="store_true",
                        help=f"store the calibrated thresholds as package defaults ({DEFAULTS_PATH.name})")
    parser.add_argument("--restart", action="store_true", help="discard the rows already in --json")
    args = parser.parse_args()
    if args.target_psnr is None and args.target_feature_distance is None:
        args.target_psnr = 30.0
    if args.target_psnr is not None and args.target_feature_distance is not None:
        parser.error("--target-psnr, --target-feature-distance: give one fidelity target")
    if not args.calibrate_only and args.n <= 128:
        parser.error(f"--n: {args.n} is not above 128, the feature dimension FID needs")
    if args.seed in args.calibration_seeds + args.heldout_seeds:
        parser.error(f"--seed: {args.seed} is also a calibration or held-out seed; evaluate on separate seeds")
    for spec in args.monitors:
        if _name(spec) not in MONITORS:
            parser.error(f"--monitors: {spec!r} is not one of {', '.join(MONITORS)} (optionally :THRESHOLD)")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("json", "restart", "write_defaults", "calibrate_only", "device")}
    report = Report(args.json, settings, args.restart)
    report.data["environment"] = _environment(device)
    model = load_model("embedded", device=device)
    adapter = model.adapter(network_rows=args.network_rows)
    extractor = EmbeddedFeatureExtractor(device=device)
    target = (f"PSNR {args.target_psnr} dB" if args.target_psnr is not None
              else f"feature distance {args.target_feature_distance}")
    print(f"device={device} n={args.n} steps={args.steps} target: {target}"
          f" calibration seeds {args.calibration_seeds} x {args.samples_per_seed}, held-out {args.heldout_seeds}, "
          f"evaluation seed {args.seed}")

    tasks = len(args.steps) * len(args.monitors) * (1 if args.calibrate_only else 2) + \
        (0 if args.calibrate_only else (3 + len(args.adaptive_tolerances) * sum(1 if s == "ddim" else 2 for s in
                                                                             args.adaptive_solvers)) * len(args.steps))
    with tqdm(total=tasks, desc="bench_early_exit", unit="task") as bar:
        for steps in args.steps:
            calibration = calibrate_all(model, adapter, steps, args, report, extractor, bar)
            if not args.calibrate_only:
                evaluate_all(model, adapter, steps, calibration, args, report, extractor, device, bar)
                report.data["summary"][str(steps)] = summarise(steps, report, args)
                report.save()

    for steps in args.steps:
        calibration = report.data["calibration"].get(str(steps), {})
        print(f"\n-- calibration at {steps} steps (calibration / held-out: NFE, PSNR of mean MSE, p10 PSNR)")
        for spec, cal in calibration.items():
            if cal.get("calibrated"):
                print(f"   {cal['spec']:<34} NFE {cal['calibration']['nfe_mean']:5.1f}"
                      f" / {cal['heldout']['nfe_mean']:5.1f}"
                      f"   PSNR {cal['calibration']['psnr']:5.1f} / {cal['heldout']['psnr']:5.1f}"
                      f"   p10 {cal['heldout']['psnr_p10']:5.1f}{'' if cal['met_target'] else '   (target not met)'}")
            else:
                print(f"   {spec:<34} {cal.get('skipped', cal.get('reason', ''))[:150]}")
        if not args.calibrate_only:
            print_summary(steps, report.data["summary"][str(steps)], calibration)
    report.data["environment"]["loadavg_end"] = os.getloadavg()
    report.save()
    if args.write_defaults:
        write_defaults(model, report, args)
    print(f"\ncommand: {_command()}\nwrote {args.json}")


if __name__ == "__main__":
    main()
