"""Calibrate a steering monitor (`steer-NAME:LOW:HIGH`) to a mean NFE on calibration seeds.

A steering monitor changes the path it watches, so no recorded trace can price its thresholds: every candidate is
an online run. LOW and HIGH start at two quantiles of the per-step change of x̂0 on the unsteered plan and one scale
multiplies both; the mean NFE falls as it grows, so it is bracketed by factors of 4 and then bisected on a log scale.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from adaptive_sampler.errors import FieldError
from adaptive_sampler.model_adapter import Conditioning, ModelAdapter
from adaptive_sampler.monitors.change import SteeringChange
from adaptive_sampler.monitors.spec import CHANGE_DISTANCES
from adaptive_sampler.planner import Planner, Steerable, steering_error
from adaptive_sampler.sampler import sample
from adaptive_sampler.solvers import Solver
from adaptive_sampler.step_info import StepInfo


@dataclass(frozen=True)
class SteeringCalibration:
    """The calibrated `monitor` spec, its mean NFE on both seed sets, and every candidate run in the order tried."""

    monitor: str
    low: float
    high: float
    target_nfe: float
    calibration_nfe_mean: float
    heldout_nfe_mean: float
    runs: list[dict[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _ScoreRecorder:
    """Scores every step with a steering monitor that never steers (LOW = 0, HIGH = the largest float)."""

    def __init__(self, name: str) -> None:
        self.probe = SteeringChange(CHANGE_DISTANCES[name], 0.0, sys.float_info.max)
        self.scores: list[torch.Tensor] = []

    def reset(self) -> None:
        self.probe.reset()

    def keep(self, rows: torch.Tensor) -> None:
        self.probe.keep(rows)

    def __call__(self, info: StepInfo) -> Any:
        decision = self.probe(info)
        self.scores.append(decision.score.detach().double().cpu())
        return decision


def calibrate_steering(
    adapter: ModelAdapter,
    shape: Sequence[int],
    planner: Planner,
    target_nfe: float,
    monitor: str = "x0-l2",
    *,
    calibration_seeds: Sequence[int],
    heldout_seeds: Sequence[int],
    samples_per_seed: int = 64,
    batch_size: int = 64,
    quantiles: tuple[float, float] = (0.25, 0.75),
    max_runs: int = 10,
    nfe_tolerance: float = 0.25,
    solver: Solver | None = None,
    conditioning: Conditioning | None = None,
    progress: bool = False,
) -> SteeringCalibration:
    """LOW/HIGH of `steer-MONITOR:LOW:HIGH` whose mean NFE on the calibration seeds is closest to `target_nfe`.

    Args:
        adapter: the model.
        shape: one sample's shape.
        planner: a planner with a step size (`SteeredPlan`, `StepSizeControl`).
        target_nfe: the mean NFE to reach.
        monitor: a change monitor's name (x0-l2, ssim, features, ...).
        calibration_seeds: the seeds the scale is chosen on.
        heldout_seeds: other seeds, which report the NFE the choice reaches.
        samples_per_seed: samples drawn per seed.
        batch_size: rows per sampling batch.
        quantiles: the quantiles of the unsteered change that LOW and HIGH start at.
        max_runs: the most candidate runs.
        nfe_tolerance: stop once a run's mean NFE is this close to the target.
        solver: the sampling solver (default DDIM).
        conditioning: a conditional model's conditioning.
        progress: show a progress bar.
    """
    if not isinstance(planner, Steerable):
        raise steering_error(planner)
    if isinstance(target_nfe, bool) or not isinstance(target_nfe, int | float) or not math.isfinite(target_nfe) \
            or target_nfe < 1:
        raise FieldError("target_nfe", target_nfe, "is not a finite number >= 1")
    if monitor not in CHANGE_DISTANCES:
        raise FieldError("monitor", monitor, "is not a change monitor's name (x0-l2, ssim, features, ...)")
    if not 0 < quantiles[0] < quantiles[1] < 1:
        raise FieldError("quantiles", quantiles, "must be two increasing numbers in (0, 1)")
    if max_runs < 2:
        raise FieldError("max_runs", max_runs, "is below 2: a bracket needs two runs")
    if samples_per_seed < 1:
        raise FieldError("samples_per_seed", samples_per_seed, "is not a positive integer")
    if not calibration_seeds or not heldout_seeds:
        raise FieldError("calibration_seeds" if not calibration_seeds else "heldout_seeds", [], "is empty")
    overlap = sorted(set(calibration_seeds) & set(heldout_seeds))
    if overlap:
        raise FieldError("heldout_seeds", overlap, "are also calibration seeds; held-out seeds must be disjoint")

    def mean_nfe(monitor: Any, seeds: Sequence[int]) -> float:
        nfe = [sample(adapter, planner, shape, samples_per_seed, batch_size=batch_size, seed=seed, monitor=monitor,
                      solver=solver, conditioning=conditioning).nfe.double() for seed in seeds]
        return float(torch.cat(nfe).mean())

    bar = tqdm(total=max_runs + 2, desc="calibrating steering", unit="run", disable=not progress)
    recorder = _ScoreRecorder(monitor)
    mean_nfe(recorder, calibration_seeds)
    bar.update(1)
    scores = torch.cat(recorder.scores)
    scores = scores[torch.isfinite(scores)]
    if scores.numel() == 0 or float(scores.max()) <= 0:
        raise FieldError("monitor", monitor, "scored no change of x̂0 on the unsteered plan; nothing to steer by")
    base_low, base_high = (float(torch.quantile(scores, q)) for q in quantiles)
    base_low = max(base_low, float(scores[scores > 0].min()))  # a zero LOW would never grow a step

    runs: list[dict[str, float]] = []

    def run(scale: float) -> float:
        low, high = base_low * scale, base_high * scale
        nfe = mean_nfe(SteeringChange(CHANGE_DISTANCES[monitor], low, high), calibration_seeds)
        runs.append({"scale": scale, "low": low, "high": high, "nfe_mean": nfe})
        bar.update(1)
        return nfe

    lo = hi = None  # the largest scale seen above the target NFE, the smallest at or below it
    scale = 1.0
    while len(runs) < max_runs:
        nfe = run(scale)
        if abs(nfe - target_nfe) <= nfe_tolerance:
            break
        if nfe > target_nfe:
            lo = scale if lo is None else max(lo, scale)
        else:
            hi = scale if hi is None else min(hi, scale)
        # NFE falls as the scale grows: step by 4 until the target is bracketed, then bisect on a log scale
        scale = scale * 4 if hi is None else scale / 4 if lo is None else math.sqrt(lo * hi)
    best = min(runs, key=lambda r: (abs(r["nfe_mean"] - target_nfe), r["nfe_mean"]))
    chosen = SteeringChange(CHANGE_DISTANCES[monitor], best["low"], best["high"])
    heldout = mean_nfe(chosen, heldout_seeds)
    bar.update(1)
    bar.close()
    return SteeringCalibration(chosen.spec(), best["low"], best["high"], float(target_nfe), best["nfe_mean"],
                               heldout, runs)
