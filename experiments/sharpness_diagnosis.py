"""Why the `sharpness` monitor never exited early, and whether its new rule does (issue 15, "Sharpness").

On the embedded Fashion-MNIST model (adapter with network_rows=8) it records the full run's x̂0 trace at --steps
uniform steps for each --solvers on --samples samples of the calibration seed and of the held-out seed, then:
  1. per step, on the calibration trace: t, σ_t = sqrt((1-ᾱ)/ᾱ), the median of the variance of the Laplacian
     s = Var(L(x̂0)) and of s / s_final, the share of samples whose s rose, the median relative change
     |s_k - s_{k-1}| / s_{k-1} (the old `sharpness` score), the median of the shipped score (relative L2 change of
     L(x̂0)) and of x0-l2's, the PSNR of x̂0_k to the final sample (of the MSE over samples), and the Spearman
     correlation over samples of each score with the MSE of x̂0_k to the final sample (does the score rank samples
     by how far they are from done?);
  2. `calibrate_threshold` at --target-psnr (calibration seed chooses, held-out seed reports) for: the old rule,
     the old rule with patience 2, the old rule weighted by the noise level (score · σ_t, σ from the model's
     schedule: what a noise-normalised plateau rule can do), a timer (score = t: the best fixed exit step), the
     shipped `sharpness`, and `x0-l2` for reference. For the old rule it also reports the first threshold that
     misses the target (where the scan stops): at which steps its samples exit and at what PSNR.
With --write-defaults it then recalibrates ONLY the `sharpness` entries of the shipped calibrated defaults
(`adaptive_sampler/monitors/calibrated_defaults.json`), with the settings stored there (policy, solver, η, network
rows, seeds, samples per seed, target), and records the old and new entries in the JSON.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/sharpness_diagnosis.py \\
        --json experiments/results/sharpness_diagnosis.json --write-defaults
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from adaptive_sampler.metrics import EmbeddedFeatureExtractor
from adaptive_sampler.model_adapter import ModelAdapter
from adaptive_sampler.models import load_model
from adaptive_sampler.monitors import DEFAULTS_PATH, ChangeMonitor, load_calibrated_defaults
from adaptive_sampler.monitors.base import ThresholdMonitor
from adaptive_sampler.monitors.calibration import X0Trace, calibrate_threshold, mse_matrix, psnr_of, record_x0_trace
from adaptive_sampler.monitors.distances import Distance, RelativeL2, Sharpness, laplacian_variance
from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.policies.builtin import Uniform
from adaptive_sampler.solvers import SOLVERS, make_solver
from adaptive_sampler.step_info import StepInfo

MODEL = "fashion-mnist"


class VarianceChange(Distance):
    """The old `sharpness` score: relative change |s_k - s_{k-1}| / s_{k-1} of s = Var(Laplacian(x̂0))."""

    name = "variance-change"

    def summary(self, x0: torch.Tensor) -> torch.Tensor:
        return laplacian_variance(x0)

    def __call__(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        return (current - previous).abs() / previous.abs().clamp_min(1e-12)


class NoiseWeightedVarianceChange(ThresholdMonitor):
    """The old score times the noise level σ_t of this step: a flat s at high noise is not a plateau. It needs the
    model's schedule, which a monitor does not see, so it lives here as the measurement of that idea."""

    name = "variance-change*sigma"

    def __init__(self, schedule: NoiseSchedule, threshold: float = 1.0) -> None:
        super().__init__(threshold)
        self.sigmas = schedule.sigmas()

    def score(self, info: StepInfo) -> torch.Tensor:
        previous = self.state.tensors.get("s")
        if previous is None:
            return torch.full((len(info.sample_indices),), math.nan)
        s = laplacian_variance(info.x0)
        return ((s - previous).abs() / previous.clamp_min(1e-12) * self.sigmas[info.t.cpu()]).float()

    def observe(self, info: StepInfo, checked_step: bool) -> None:
        self.state.tensors["s"] = laplacian_variance(info.x0)


class Timer(ThresholdMonitor):
    """Fires once t <= threshold: every sample exits at the same step, the baseline a per-sample score must beat."""

    name = "timer"

    def score(self, info: StepInfo) -> torch.Tensor:
        return info.t.float()


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = torch.stack([a.double().argsort().argsort(), b.double().argsort().argsort()]).double()
    return float(torch.corrcoef(ranks)[0, 1])


def _change(distance: Distance, trace: X0Trace) -> torch.Tensor:
    """distance(x̂0_{k-1}, x̂0_k) [n, K-1] of every sample and step."""
    summaries = [distance.summary(trace.x0[:, k]) for k in range(trace.num_steps)]
    return torch.stack([distance(summaries[k - 1], summaries[k]) for k in range(1, trace.num_steps)], dim=1)


def per_step(trace: X0Trace, sigmas: torch.Tensor) -> list[dict[str, Any]]:
    s = torch.stack([laplacian_variance(trace.x0[:, k]) for k in range(trace.num_steps)], dim=1).double()
    old, new, l2 = (_change(d, trace).double() for d in (VarianceChange(), Sharpness(), RelativeL2()))
    mse = mse_matrix(trace).double()
    rows = []
    for k in range(trace.num_steps):
        row: dict[str, Any] = {
            "step": k, "nfe": k + 1, "t": int(trace.timesteps[k]), "sigma": float(sigmas[trace.timesteps[k]]),
            "laplacian_variance_median": float(s[:, k].median()),
            "laplacian_variance_over_final_median": float((s[:, k] / s[:, -1]).median()),
            "psnr_to_final": float(psnr_of(mse[:, k].mean())),
        }
        if k > 0:
            row |= {
                "share_rising": float((s[:, k] > s[:, k - 1]).double().mean()),
                "old_score_median": float(old[:, k - 1].median()),
                "new_score_median": float(new[:, k - 1].median()),
                "x0_l2_median": float(l2[:, k - 1].median()),
            }
            if k < trace.num_steps - 1:  # the last x̂0 is the sample: its MSE is 0
                row |= {"spearman_old_vs_mse": _spearman(old[:, k - 1], mse[:, k]),
                        "spearman_new_vs_mse": _spearman(new[:, k - 1], mse[:, k]),
                        "spearman_x0_l2_vs_mse": _spearman(l2[:, k - 1], mse[:, k])}
        rows.append(row)
    return rows


def _simulation(sim: Any) -> dict[str, Any]:
    return {"threshold": sim.threshold, "nfe_mean": sim.nfe_mean, "psnr": sim.psnr, "psnr_p10": sim.psnr_p10}


def first_miss(monitor: ThresholdMonitor, trace: X0Trace, threshold: float) -> dict[str, Any]:
    """Where the samples that exit before the end exit under `threshold`, and how far from done they are."""
    scores = monitor.replay_scores(trace.step_infos(), trace.n, trace.num_steps)
    exit_step = monitor.simulate_exits(scores, threshold)
    early = exit_step < trace.num_steps - 1
    mse = mse_matrix(trace)[torch.arange(trace.n), exit_step]
    return {"threshold": threshold, "exiting_early": int(early.sum()),
            "exit_nfe_histogram": {str(int(k) + 1): int(c) for k, c in zip(*exit_step[early].unique(return_counts=True),
                                                                            strict=True)},
            "psnr_of_early_exits": float(psnr_of(mse[early].mean())) if early.any() else None}


def calibrations(adapter: ModelAdapter, trace: X0Trace, held: X0Trace, args: argparse.Namespace,
                 extractor: EmbeddedFeatureExtractor) -> dict[str, Any]:
    monitors: dict[str, ThresholdMonitor] = {
        "old: variance change": ChangeMonitor(VarianceChange(), 1.0),
        "old: variance change, patience=2": ChangeMonitor(VarianceChange(), 1.0, patience=2),
        "old x sigma_t: variance change times noise level": NoiseWeightedVarianceChange(adapter.schedule),
        "timer: one exit step for all": Timer(1.0),
        "new: sharpness (Laplacian change)": ChangeMonitor("sharpness", 1.0),
        "x0-l2 (reference)": ChangeMonitor("l2", 1.0),
    }
    out = {}
    for label, monitor in monitors.items():
        result = calibrate_threshold(adapter, trace.x0.shape[2:], trace.timesteps, monitor,
                                     target_psnr=args.target_psnr, calibration_seeds=[args.calibration_seed],
                                     heldout_seeds=[args.heldout_seed], calibration_trace=trace, heldout_trace=held,
                                     feature_extractor=extractor)
        out[label] = {"met_target": result.met_target, "calibration": _simulation(result.calibration),
                      "heldout": _simulation(result.heldout), "heldout_met_target": result.heldout_met_target,
                      "candidates_scanned": len(result.curve)}
        if label.startswith("old: variance change") and result.curve[-1].psnr < args.target_psnr:
            out[label]["first_miss"] = first_miss(monitor, trace, result.curve[-1].threshold)
        print(f"  {label:50s} NFE {result.calibration.nfe_mean:6.2f} ({result.calibration.psnr:.2f} dB) held-out "
              f"{result.heldout.nfe_mean:6.2f} ({result.heldout.psnr:.2f} dB)", flush=True)
    return out


def write_defaults(loaded: Any, extractor: EmbeddedFeatureExtractor, command: str) -> dict[str, Any]:
    """Recalibrate only the `sharpness` entries of the shipped defaults, with the settings stored beside them."""
    data = load_calibrated_defaults()
    entry = data["models"][MODEL]
    if entry["weights_sha256"] != loaded.weights_sha256:
        raise SystemExit(f"{DEFAULTS_PATH} holds defaults for other {MODEL} weights; recalibrate them all")
    changes = {}
    for steps, settings in entry["steps"].items():
        old = settings["monitors"].get("sharpness")
        if old is None:
            continue
        if (settings["policy"], settings["solver"], settings["eta"]) != ("uniform", "ddim", 0.0):
            raise SystemExit(f"{steps} steps: stored settings {settings['policy']}/{settings['solver']}/η="
                             f"{settings['eta']} are not what this update reproduces")
        adapter = loaded.adapter(network_rows=settings["network_rows"])
        result = calibrate_threshold(
            adapter, loaded.sample_shape, Uniform().timesteps(int(steps), adapter.schedule), "sharpness",
            target_psnr=old["target_psnr"], target_feature_distance=old["target_feature_distance"],
            calibration_seeds=settings["calibration_seeds"], heldout_seeds=settings["heldout_seeds"],
            samples_per_seed=settings["samples_per_seed"], feature_extractor=extractor)
        new = {k: v for k, v in result.default_entry().items() if k in old} | {"command": command}
        settings["monitors"]["sharpness"] = new
        changes[steps] = {"before": old, "after": new}
        print(f"  {steps} steps: sharpness calibrated NFE {old['calibration_nfe_mean']} -> "
              f"{new['calibration_nfe_mean']} (held-out {old['heldout_nfe_mean']} -> {new['heldout_nfe_mean']})",
              flush=True)
    DEFAULTS_PATH.write_text(json.dumps(data, indent=2) + "\n")
    return changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "sharpness_diagnosis.json")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--solvers", nargs="+", choices=list(SOLVERS), default=["ddim", "dpmpp-2m"])
    parser.add_argument("--samples", type=int, default=256, help="samples per seed")
    parser.add_argument("--calibration-seed", type=int, default=1000)
    parser.add_argument("--heldout-seed", type=int, default=2000)
    parser.add_argument("--target-psnr", type=float, default=30.0)
    parser.add_argument("--write-defaults", action="store_true",
                        help="recalibrate the sharpness entries of the shipped calibrated defaults")
    args = parser.parse_args()
    command = " ".join([f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}", Path(sys.executable).name,
                        *sys.argv])
    start = time.perf_counter()
    loaded = load_model("embedded")
    adapter = loaded.adapter(network_rows=8)
    schedule = adapter.schedule
    extractor = EmbeddedFeatureExtractor()
    timesteps = Uniform().timesteps(args.steps, schedule)
    report: dict[str, Any] = {"command": command, "settings": {k: str(v) for k, v in vars(args).items()},
                              "solvers": {}}
    for solver in args.solvers:
        traces = [record_x0_trace(adapter, loaded.sample_shape, timesteps, [seed], args.samples,
                                  solver=make_solver(solver)) for seed in (args.calibration_seed, args.heldout_seed)]
        print(f"{solver}, {args.steps} steps, {args.samples} samples per seed", flush=True)
        report["solvers"][solver] = {"per_step": per_step(traces[0], schedule.sigmas()),
                                     "calibration": calibrations(adapter, *traces, args, extractor)}
    if args.write_defaults:
        print("calibrated defaults: sharpness only", flush=True)
        report["defaults_update"] = write_defaults(loaded, extractor, command)
    report["wall_s"] = time.perf_counter() - start
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json} ({report['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
