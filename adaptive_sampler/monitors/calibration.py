"""Calibrate a monitor's threshold for one model and step count against a fidelity target.

Thresholds do not transfer between models or step counts, so each (model, steps) pair needs its own.
`record_x0_trace` records x̂0 of every step of full runs; `calibrate_threshold` scores every step once
(`ThresholdMonitor.replay_scores`) and simulates each candidate threshold offline (`simulate_exits`, the online
streak logic): a sample that exits at step k returns x̂0 of step k. That is what the online run returns with
`finish="x0"`, because a sample is computed bitwise identically whether or not others leave its batch (fixed
`network_rows`) and its score depends only on its own x̂0 history; a tail finish lands closer to the full run, so
the threshold is conservative there. One recorded run prices every threshold. A latent model's monitor replays on
latent or decoded x̂0 (`space=`); the `CalibrationTarget` is always measured on decoded images.
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from adaptive_sampler.errors import FieldError
from adaptive_sampler.metrics import EmbeddedFeatureExtractor, Fidelity, fidelity
from adaptive_sampler.metrics.distribution import KidReference, fid, kid
from adaptive_sampler.metrics.features import FeatureExtractor
from adaptive_sampler.metrics.fidelity import to_unit_range
from adaptive_sampler.metrics.statistics import FeatureStatistics, embedded_reference_features
from adaptive_sampler.model_adapter import Conditioning, ModelAdapter
from adaptive_sampler.monitors.base import ThresholdMonitor
from adaptive_sampler.monitors.space import Decode
from adaptive_sampler.sampler import sample
from adaptive_sampler.solvers import Solver
from adaptive_sampler.step_info import StepInfo

_PSNR_EPS = 1e-8


@dataclass
class TraceFeatures:
    """What `extractor` makes of a trace, on the CPU as it returns them: `steps` [n, K, d] of x̂0 at every step,
    `final` [n, d] of the final samples, and `distance` [n, K] between the two (`feature_distance_matrix`)."""

    extractor: FeatureExtractor  # held, so that its id, the key of `X0Trace.features`, is not reused
    steps: torch.Tensor
    final: torch.Tensor
    distance: torch.Tensor | None = None


@dataclass
class X0Trace:
    """x̂0 of every step of full runs: `x0` [n, K, *shape] on the CPU in the monitor's `space`, the final `samples`,
    the `timesteps` [K] and each row's (seed, index). Traced in a latent model's latent space, `images` and
    `image_samples` hold the decoded copies the fidelity is measured on (None: `x0` and `samples` are images).
    `cache` (`mse_matrix`) and `features` (`trace_features`, per extractor) keep what calibration derives once."""

    x0: torch.Tensor
    samples: torch.Tensor
    timesteps: torch.Tensor
    seeds: list[tuple[int, int]]
    wall_s: float
    batch_size: int
    space: Literal["latent", "image"] = "latent"
    cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    images: torch.Tensor | None = None
    image_samples: torch.Tensor | None = None
    features: dict[int, TraceFeatures] = field(default_factory=dict, repr=False, compare=False)

    @property
    def image_x0(self) -> torch.Tensor:
        return self.x0 if self.images is None else self.images

    @property
    def final_images(self) -> torch.Tensor:
        return self.samples if self.image_samples is None else self.image_samples

    @property
    def n(self) -> int:
        return self.x0.shape[0]

    @property
    def num_steps(self) -> int:
        return self.x0.shape[1]

    @property
    def seed_list(self) -> list[int]:
        return sorted({s for s, _ in self.seeds})

    def step_infos(self, batch_size: int | None = None) -> list[StepInfo]:
        """StepInfos of a replay in batches of `batch_size` rows (None: as sampled); `x_t` and `eps` are empty."""
        batch_size = batch_size or self.batch_size
        t_prevs = torch.cat([self.timesteps[1:], self.timesteps.new_full((1,), -1)])
        infos, empty = [], torch.empty(0)
        for start in range(0, self.n, batch_size):
            rows = torch.arange(start, min(start + batch_size, self.n))
            for k in range(self.num_steps):
                infos.append(StepInfo(k, self.timesteps[k].expand(len(rows)), t_prevs[k].expand(len(rows)), empty,
                                      self.x0[rows, k], empty, rows))
        return infos

    def exit_x0(self, exit_step: torch.Tensor) -> torch.Tensor:
        """x̂0 of each row at its exit step [n, *shape], as an image."""
        return self.image_x0[torch.arange(self.n), exit_step]


class _X0Recorder:
    """A monitor that never stops a sample and keeps x̂0 [rows, ...] of every step, one list per batch."""

    def __init__(self) -> None:
        self.batches: list[list[torch.Tensor]] = []

    def reset(self) -> None:
        self.batches.append([])

    def __call__(self, info: StepInfo) -> None:
        self.batches[-1].append(info.x0.float().cpu())


def record_x0_trace(adapter: ModelAdapter, shape: Sequence[int], timesteps: Sequence[int] | torch.Tensor,
                    seeds: Sequence[int], samples_per_seed: int, *, batch_size: int = 64,
                    progress: bool = False, conditioning: Conditioning | None = None, decode: Decode | None = None,
                    space: str = "latent", solver: Solver | None = None) -> X0Trace:
    """Full runs for each seed, keeping x̂0 of every step (cheaper than `sample(..., trace=True)`).

    Args:
        adapter: the model.
        shape: one sample's shape.
        timesteps: the planned steps, walked in full.
        seeds: one run of `samples_per_seed` samples per seed.
        samples_per_seed: samples drawn per seed.
        batch_size: rows per sampling batch (a replay sees the same batches).
        progress: show a progress bar.
        conditioning: a conditional model's conditioning.
        decode: a latent model's decoder (`LoadedModel.decode`); x̂0 and samples are decoded too.
        space: where the monitor reads x̂0, `latent` or `image` (only with `decode`).
        solver: the sampling solver (default DDIM).
    """
    if samples_per_seed < 1:
        raise FieldError("samples_per_seed", samples_per_seed, "is not a positive integer")
    if not seeds:
        raise FieldError("seeds", list(seeds), "is empty; give at least one seed")
    planned = torch.as_tensor(timesteps, dtype=torch.int64).cpu()
    if space not in ("latent", "image"):
        raise FieldError("space", space, "is not one of latent, image")
    x0s, samples, images, image_samples, keys, wall = [], [], [], [], [], 0.0
    for seed in tqdm(list(seeds), desc="recording x̂0 traces", unit="seed", disable=not progress):
        recorder = _X0Recorder()
        result = sample(adapter, planned, shape, samples_per_seed, batch_size=batch_size, seed=seed,
                        monitor=recorder, conditioning=conditioning, solver=solver)
        x0s += [torch.stack(steps, dim=1) for steps in recorder.batches]
        samples.append(result.samples.float())
        if decode is not None:
            device = adapter.device
            images += [torch.stack([decode(x.to(device)).float().cpu() for x in steps], dim=1)
                       for steps in recorder.batches]
            image_samples.append(decode(result.samples.to(device)).float().cpu())
        keys += [(int(seed), i) for i in range(samples_per_seed)]
        wall += result.wall_s
    if decode is None:
        return X0Trace(torch.cat(x0s), torch.cat(samples), planned, keys, wall, batch_size)
    if space == "image":
        return X0Trace(torch.cat(images), torch.cat(image_samples), planned, keys, wall, batch_size, "image")
    return X0Trace(torch.cat(x0s), torch.cat(samples), planned, keys, wall, batch_size, images=torch.cat(images),
                   image_samples=torch.cat(image_samples))


def mse_matrix(trace: X0Trace) -> torch.Tensor:
    """MSE [n, K] of every step's x̂0 to the final sample on [0, 1] (cached in `trace.cache`)."""
    if "mse" not in trace.cache:
        target = to_unit_range(trace.final_images).flatten(1)
        trace.cache["mse"] = torch.stack([(to_unit_range(trace.image_x0[:, k]).flatten(1) - target).pow(2).mean(1)
                                          for k in range(trace.num_steps)], dim=1)
    return trace.cache["mse"]


def psnr_of(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for MSE on [0, 1], with piq's 1e-8 floor (identical images: 80 dB)."""
    return -10 * torch.log10(mse.double() + _PSNR_EPS)


def trace_features(trace: X0Trace, extractor: FeatureExtractor) -> TraceFeatures:
    """The features of `trace` under `extractor`, extracted on its first call for that pair (`trace.features`)."""
    found = trace.features.get(id(extractor))
    if found is None:
        steps = torch.stack([extractor(trace.image_x0[:, k]).cpu() for k in range(trace.num_steps)], dim=1)
        found = trace.features[id(extractor)] = TraceFeatures(extractor, steps, extractor(trace.final_images).cpu())
    return found


@functools.cache
def _embedded_extractor() -> EmbeddedFeatureExtractor:
    """The one embedded feature net of every default, so that a trace's features under it are extracted once."""
    return EmbeddedFeatureExtractor()


def feature_distance_matrix(trace: X0Trace, feature_extractor: FeatureExtractor) -> torch.Tensor:
    """L2 distance [n, K] between features of x̂0 of every step and of the final sample (cached per extractor)."""
    found = trace_features(trace, feature_extractor)
    if found.distance is None:
        final = found.final.float()
        found.distance = torch.stack([(found.steps[:, k].float() - final).norm(dim=1)
                                      for k in range(trace.num_steps)], dim=1)
    return found.distance


class CalibrationTarget(abc.ABC):
    """What the exits of a threshold must achieve against the full run on the same seeds (a plug-in)."""

    def distribution(self, trace: X0Trace) -> DistributionScorer | None:
        """The scorer of `ExitSimulation.distribution` on `trace` (None: not measured)."""
        return None

    @abc.abstractmethod
    def met(self, simulation: ExitSimulation, full_distribution: float | None) -> bool:
        """Whether `simulation` meets the target (`full_distribution`: the full run's distribution score)."""

    @abc.abstractmethod
    def record(self) -> dict[str, Any]:
        """`target_psnr`, `target_feature_distance` and `target_distribution` of `CalibrationResult`."""


def _finite(name: str, value: float, minimum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            (minimum is not None and value < minimum):
        raise FieldError(name, value, "is not a finite number" + ("" if minimum is None else f" >= {minimum:g}"))


@dataclass(frozen=True)
class PsnrTarget(CalibrationTarget):
    """PSNR (dB) of the exits' mean squared error to the full run at least `db` (see `ExitSimulation`)."""

    db: float

    def __post_init__(self) -> None:
        _finite("target_psnr", self.db)

    def met(self, simulation: ExitSimulation, full_distribution: float | None) -> bool:
        return simulation.psnr >= self.db

    def record(self) -> dict[str, Any]:
        return {"target_psnr": self.db, "target_feature_distance": None, "target_distribution": None}


@dataclass(frozen=True)
class FeatureDistanceTarget(CalibrationTarget):
    """Mean feature L2 distance of the exits to the full run at most `distance` (`calibrate_threshold`'s space)."""

    distance: float

    def __post_init__(self) -> None:
        _finite("target_feature_distance", self.distance, 0)

    def met(self, simulation: ExitSimulation, full_distribution: float | None) -> bool:
        return simulation.feature_distance is not None and simulation.feature_distance <= self.distance

    def record(self) -> dict[str, Any]:
        return {"target_psnr": None, "target_feature_distance": self.distance, "target_distribution": None}


@dataclass(frozen=True)
class DistributionTarget(CalibrationTarget):
    """FID or KID of the exits at most `max_increase_pct` % above the full run's, against `reference_features`
    in the space of `feature_extractor` (default: the embedded net and its test images). FID needs more samples
    per seed set than feature dimensions; a relative KID target means little where the full run's KID is near 0.
    """

    metric: Literal["fid", "kid"]
    max_increase_pct: float
    feature_extractor: FeatureExtractor | None = None
    reference_features: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.metric not in ("fid", "kid"):
            raise FieldError("target_distribution.metric", self.metric, "is not one of fid, kid")
        _finite("target_distribution.max_increase_pct", self.max_increase_pct, 0)
        if (self.feature_extractor is None) != (self.reference_features is None):
            raise FieldError("target_distribution.reference_features", None if self.reference_features is None
                             else tuple(self.reference_features.shape),
                             "must come with its feature_extractor (and the extractor with its reference)")

    def distribution(self, trace: X0Trace) -> DistributionScorer:
        reference = embedded_reference_features() if self.reference_features is None else self.reference_features
        return DistributionScorer(self.metric, self.feature_extractor or _embedded_extractor(),
                                  reference.double().cpu(), trace)

    def met(self, simulation: ExitSimulation, full_distribution: float | None) -> bool:
        return simulation.distribution is not None and full_distribution is not None and \
            simulation.distribution <= full_distribution * (1 + self.max_increase_pct / 100)

    def record(self) -> dict[str, Any]:
        return {"target_psnr": None, "target_feature_distance": None,
                "target_distribution": {"metric": self.metric, "max_increase_pct": self.max_increase_pct}}


class DistributionScorer:
    """FID or KID of any choice of one x̂0 per sample of a trace (`trace_features`), and `full`'s."""

    def __init__(self, metric: Literal["fid", "kid"], extractor: FeatureExtractor, reference: torch.Tensor,
                 trace: X0Trace) -> None:
        dim = reference.shape[1]
        if metric == "fid" and trace.n <= dim:
            raise FieldError("samples_per_seed", trace.n, f"samples per seed set are too few for FID in a {dim}-"
                             f"dimensional feature space; give more than {dim}, or use a KID target")
        found = trace_features(trace, extractor)
        self.features = found.steps  # [n, K, d]
        self.reference = FeatureStatistics.from_features(reference) if metric == "fid" else KidReference(reference)
        self.full = self._score(found.final.double())

    def _score(self, features: torch.Tensor) -> float:
        if isinstance(self.reference, FeatureStatistics):
            return fid(FeatureStatistics.from_features(features), self.reference)
        return kid(features, self.reference)

    def __call__(self, exit_step: torch.Tensor) -> float:
        return self._score(self.features[torch.arange(len(exit_step)), exit_step].double())


@dataclass(frozen=True)
class ExitSimulation:
    """One threshold simulated on a trace: mean NFE and the fidelity of the exits to the full run.

    `psnr` is the PSNR of the MSE averaged over the samples (what `PsnrTarget` constrains); `mean_psnr`, the mean of
    per-sample PSNRs, is easy to game: a sample that never exits scores 80 dB and hides one that exits too early.
    """

    threshold: float
    nfe_mean: float
    psnr: float
    mean_psnr: float
    psnr_p10: float
    feature_distance: float | None
    distribution: float | None = None


@dataclass
class CalibrationResult:
    """A calibrated threshold and what it achieves on the calibration seeds and on held-out seeds
    (`heldout_fidelity`: `metrics.fidelity` of the held-out exits)."""

    monitor: str
    name: str
    threshold: float
    guardrails: dict[str, Any]
    num_steps: int
    target_psnr: float | None
    target_feature_distance: float | None
    target_distribution: dict[str, Any] | None
    full_distribution: dict[str, float] | None  # the full run's FID or KID on the calibration and held-out seeds
    met_target: bool
    calibration: ExitSimulation
    heldout: ExitSimulation
    heldout_fidelity: Fidelity
    heldout_met_target: bool
    n_calibration: int
    n_heldout: int
    calibration_seeds: list[int]
    heldout_seeds: list[int]
    curve: list[ExitSimulation] = field(default_factory=list)

    def to_json(self, with_curve: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not with_curve:
            data.pop("curve")
        return data

    def default_entry(self) -> dict[str, Any]:
        """The record `calibrated_defaults.json` keeps for this monitor (`default_entry_of` its `to_json()`)."""
        return default_entry_of(self.to_json())


def default_entry_of(result: dict[str, Any]) -> dict[str, Any]:
    """The record `calibrated_defaults.json` keeps for a monitor, from its `CalibrationResult.to_json()` as a
    results file holds it (one written before the distribution targets existed gives None for those).

    Args:
        result: a `CalibrationResult.to_json()`.
    """
    held = result["heldout"]
    return {
        "threshold": result["threshold"], "guardrails": result["guardrails"], "target_psnr": result["target_psnr"],
        "target_feature_distance": result["target_feature_distance"],
        "target_distribution": result.get("target_distribution"), "heldout_distribution": held.get("distribution"),
        "calibration_nfe_mean": result["calibration"]["nfe_mean"], "heldout_nfe_mean": held["nfe_mean"],
        "heldout_psnr": held["psnr"], "heldout_psnr_p10": held["psnr_p10"],
        "heldout_feature_distance": held["feature_distance"],
        "n_calibration": result["n_calibration"], "n_heldout": result["n_heldout"],
    }


def _candidates(monitor: ThresholdMonitor, scores: torch.Tensor, num_steps: int, grid_size: int) -> list[float]:
    """Thresholds from the most conservative to the most aggressive."""
    finite = scores[torch.isfinite(scores)].double()
    if monitor.fires_above:  # budgets: score = NFE-like, fires when score >= threshold
        values = sorted({float(v) for v in finite.unique()} | {float(num_steps)}, reverse=True)
        if len(values) > grid_size:
            values = [values[int(i)] for i in torch.linspace(0, len(values) - 1, grid_size).round().long()]
        return values
    levels = torch.linspace(0, 1, grid_size, dtype=torch.float64)
    quantiles = torch.quantile(finite, levels) if finite.numel() else torch.zeros(0, dtype=torch.float64)
    return sorted({0.0} | {max(0.0, float(q)) for q in quantiles})


def _simulate(monitor: ThresholdMonitor, scores: torch.Tensor, threshold: float, trace: X0Trace,
              extractor: FeatureExtractor | None, distribution: DistributionScorer | None
              ) -> tuple[ExitSimulation, torch.Tensor]:
    exit_step = monitor.simulate_exits(scores, threshold)
    rows = torch.arange(len(exit_step))
    exit_mse = mse_matrix(trace)[rows, exit_step].double()
    per_sample = psnr_of(exit_mse)
    feature = None if extractor is None else feature_distance_matrix(trace, extractor)[rows, exit_step]
    return ExitSimulation(
        threshold=threshold,
        nfe_mean=float((exit_step + 1).double().mean()),
        psnr=float(psnr_of(exit_mse.mean())),
        mean_psnr=float(per_sample.mean()),
        psnr_p10=float(torch.quantile(per_sample, 0.1)),
        feature_distance=None if feature is None else float(feature.double().mean()),
        distribution=None if distribution is None else distribution(exit_step),
    ), exit_step


def calibrate_threshold(monitor: ThresholdMonitor, target: CalibrationTarget, calibration: X0Trace,
                        heldout: X0Trace, *, feature_extractor: FeatureExtractor | None = None,
                        grid_size: int = 256) -> CalibrationResult:
    """The threshold of `monitor` that exits earliest while the exits meet `target` on the calibration trace.

    Candidates (`grid_size` quantiles of the calibration scores plus 0; budgets: every NFE) are scanned from the
    most conservative, stopping at the first that misses the target, so the answer does not rest on a lucky bump
    of a noisy fidelity curve.

    Args:
        monitor: the monitor to calibrate; its guardrails are kept.
        target: what the exits must achieve.
        calibration: the trace (`record_x0_trace`) the threshold is chosen on.
        heldout: a trace of the same timesteps and space on other seeds, which reports what the choice achieves.
        feature_extractor: the space of the reported feature distance (default for a `FeatureDistanceTarget`:
            the embedded net; else none).
        grid_size: the number of candidate quantiles (at least 2).
    """
    if not isinstance(monitor, ThresholdMonitor) or not monitor.calibratable:
        raise FieldError("monitor", getattr(monitor, "name", monitor), "cannot be calibrated from a recorded trace "
                         "(a wall-clock budget, a steering monitor or a composite); calibrate its quality "
                         "monitors one by one")
    if not isinstance(target, CalibrationTarget):
        raise FieldError("target", target, "is not a CalibrationTarget (PsnrTarget, FeatureDistanceTarget or "
                         "DistributionTarget)")
    overlap = sorted(set(calibration.seed_list) & set(heldout.seed_list))
    if overlap:
        raise FieldError("heldout", overlap, "are also calibration seeds; held-out seeds must be disjoint")
    if not torch.equal(calibration.timesteps, heldout.timesteps) or calibration.space != heldout.space:
        raise FieldError("heldout", heldout.timesteps.tolist(), "walked other timesteps or another space than the "
                         "calibration trace")
    if grid_size < 2:
        raise FieldError("grid_size", grid_size, "is below 2")
    if feature_extractor is None and isinstance(target, FeatureDistanceTarget):
        feature_extractor = _embedded_extractor()
    num_steps = calibration.num_steps
    cal_dist, held_dist = target.distribution(calibration), target.distribution(heldout)
    cal_full = None if cal_dist is None else cal_dist.full
    cal_scores = monitor.replay_scores(calibration.step_infos(), calibration.n, num_steps)
    curve: list[ExitSimulation] = []
    chosen: ExitSimulation | None = None
    for threshold in _candidates(monitor, cal_scores, num_steps, grid_size):
        simulated, _ = _simulate(monitor, cal_scores, threshold, calibration, feature_extractor, cal_dist)
        curve.append(simulated)
        if not target.met(simulated, cal_full):
            break
        if chosen is None or simulated.nfe_mean < chosen.nfe_mean:
            chosen = simulated
    met = chosen is not None
    if chosen is None:  # not even the most conservative candidate meets it: keep that one and say so
        chosen = curve[0]

    held_scores = monitor.replay_scores(heldout.step_infos(), heldout.n, num_steps)
    held_sim, held_exit = _simulate(monitor, held_scores, chosen.threshold, heldout, feature_extractor, held_dist)
    held_fidelity = fidelity(heldout.exit_x0(held_exit), heldout.final_images, feature_extractor)
    suffix = ",space=image" if calibration.space == "image" else ""
    return CalibrationResult(
        monitor=monitor.with_threshold(chosen.threshold).spec() + suffix, name=monitor.name,
        threshold=chosen.threshold, guardrails=monitor.guardrails.model_dump(exclude_defaults=True),
        num_steps=num_steps, **target.record(),
        full_distribution=None if cal_dist is None or held_dist is None else {
            "calibration": cal_dist.full, "heldout": held_dist.full},
        met_target=met, calibration=chosen, heldout=held_sim, heldout_fidelity=held_fidelity,
        heldout_met_target=target.met(held_sim, None if held_dist is None else held_dist.full),
        n_calibration=calibration.n, n_heldout=heldout.n, calibration_seeds=calibration.seed_list,
        heldout_seeds=heldout.seed_list, curve=curve,
    )


__all__ = [
    "CalibrationResult", "CalibrationTarget", "DistributionScorer", "DistributionTarget", "ExitSimulation",
    "FeatureDistanceTarget", "PsnrTarget", "TraceFeatures", "X0Trace", "calibrate_threshold", "default_entry_of",
    "feature_distance_matrix", "mse_matrix", "psnr_of", "record_x0_trace", "trace_features",
]
