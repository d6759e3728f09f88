"""Calibrate a monitor's threshold for one model and step count against a fidelity target.

Thresholds do not transfer between models or step counts (x̂0 moves by different amounts per step), so each
(model, steps) pair needs its own. `calibrate_threshold` runs the full sampling run once per seed set while
recording x̂0 of every step (`record_x0_trace`), scores every step of every sample once with the monitor
(`ThresholdMonitor.replay_scores`, batch by batch as the online run sees them), and then simulates each candidate
threshold offline (`ThresholdMonitor.simulate_exits`, the same streak logic as the online monitor): a sample that
exits at step k returns x̂0 of step k. That is exactly what the online run returns with `finish="x0"` (under the
default tail finish, which returns samples closer to the full run, the threshold is conservative): the core
computes a sample bitwise identically whether or not other samples leave its batch (the adapter's fixed
`network_rows`; with `network_rows=None` the two may differ by float round-off), and a monitor's score of a sample
depends only on that sample's own x̂0 history (its per-row state compacts with the batch). So one recorded run
prices every threshold, at no further network cost.

A latent model calibrates in either space (`space`, or the spec's `space=` option): the monitor replays on latent
x̂0 (`latent`) or on decoded x̂0 (`image`, what an `ImageSpace` monitor sees online); either way the fidelity
target is measured on decoded images, the ones the user gets.

A distribution target (`DistributionTarget`: FID or KID of the exits at most X % above the full run's, on the same
seeds) is priced the same way, from the features of every step's x̂0. That is exact for `finish="x0"`; a tail
finish returns samples closer to the full run than x̂0, so a threshold calibrated this way is conservative for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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
from adaptive_sampler.monitors.base import Monitor, ThresholdMonitor
from adaptive_sampler.monitors.space import Decode
from adaptive_sampler.monitors.spec import MONITORS, monitor_from_spec, split_space
from adaptive_sampler.sampler import sample
from adaptive_sampler.solvers import Solver
from adaptive_sampler.step_info import StepInfo

_PSNR_EPS = 1e-8


@dataclass
class X0Trace:
    """x̂0 of every step of full runs (no exits): `x0` [n, K, *shape] float32 on the CPU (in the monitor's space),
    the final `samples` [n, *shape], the walked `timesteps` [K], which (seed, index) each row is, and the sampling
    wall time. For a latent model traced in latent space, `images` [n, K, *image shape] and `image_samples` hold
    the decoded x̂0 and samples the fidelity is measured on (None: `x0` and `samples` are images)."""

    x0: torch.Tensor
    samples: torch.Tensor
    timesteps: torch.Tensor
    seeds: list[tuple[int, int]]
    wall_s: float
    cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    images: torch.Tensor | None = None
    image_samples: torch.Tensor | None = None

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

    def step_infos(self, batch_size: int = 256) -> list[StepInfo]:
        """StepInfos of a replay, batch after batch of `batch_size` rows (each from step 0): step, t, t_prev, x0 and
        sample_indices = trace rows.

        `x_t` and `eps` are not recorded (empty tensors): the monitors look at x̂0 only.
        """
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
    """Full runs `sample(adapter, timesteps, shape, samples_per_seed, seed=s, conditioning=conditioning,
    solver=solver)` for each seed s, keeping x̂0 of every step (through a monitor that never stops a sample;
    cheaper than `trace=True`, which keeps x_t and ε̂). With `decode` (a latent model) every x̂0 and sample is
    decoded too: the trace's `x0` is then decoded (`space="image"`) or latent with the decoded copy in `images`
    (`space="latent"`)."""
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
        # every row of a batch walks every planned step: [rows, K, *shape] per batch
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
        return X0Trace(torch.cat(x0s), torch.cat(samples), planned, keys, wall)
    if space == "image":
        return X0Trace(torch.cat(images), torch.cat(image_samples), planned, keys, wall)
    return X0Trace(torch.cat(x0s), torch.cat(samples), planned, keys, wall, images=torch.cat(images),
                   image_samples=torch.cat(image_samples))


def mse_matrix(trace: X0Trace) -> torch.Tensor:
    """Mean squared error [n, K] of x̂0 of every step to the final sample, on [0, 1] as `metrics.fidelity` maps
    images (cached in `trace.cache`, so monitors calibrated on one trace share it)."""
    if "mse" not in trace.cache:
        target = to_unit_range(trace.final_images).flatten(1)
        trace.cache["mse"] = torch.stack([(to_unit_range(trace.image_x0[:, k]).flatten(1) - target).pow(2).mean(1)
                                          for k in range(trace.num_steps)], dim=1)
    return trace.cache["mse"]


def psnr_of(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for MSE on [0, 1], with piq's 1e-8 floor (identical images: 80 dB)."""
    return -10 * torch.log10(mse.double() + _PSNR_EPS)


def feature_distance_matrix(trace: X0Trace, feature_extractor: FeatureExtractor) -> torch.Tensor:
    """L2 distance [n, K] between features of x̂0 of every step and of the final sample (cached per extractor)."""
    key = f"features-{id(feature_extractor)}"
    if key not in trace.cache:
        target = feature_extractor(trace.final_images).float().cpu()
        trace.cache[key] = torch.stack([(feature_extractor(trace.image_x0[:, k]).float().cpu() - target).norm(dim=1)
                                        for k in range(trace.num_steps)], dim=1)
    return trace.cache[key]


@dataclass(frozen=True)
class DistributionTarget:
    """FID or KID of the exit x̂0s at most `max_increase_pct` % above the full run's on the same seeds.

    Both are measured against `reference_features` [m, d] in the space of `feature_extractor` (default: the
    embedded Fashion-MNIST net and its 10,000 test images). FID needs more samples per seed set than feature
    dimensions. A relative KID target means little where the full run's KID is near 0; use FID there.
    """

    metric: Literal["fid", "kid"]
    max_increase_pct: float
    feature_extractor: FeatureExtractor | None = None
    reference_features: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.metric not in ("fid", "kid"):
            raise FieldError("target_distribution.metric", self.metric, "is not one of fid, kid")
        if not isinstance(self.max_increase_pct, (int, float)) or not math.isfinite(self.max_increase_pct) or \
                self.max_increase_pct < 0:
            raise FieldError("target_distribution.max_increase_pct", self.max_increase_pct,
                             "is not a finite number >= 0 (a percentage)")
        if (self.feature_extractor is None) != (self.reference_features is None):
            raise FieldError("target_distribution.reference_features", None if self.reference_features is None
                             else tuple(self.reference_features.shape),
                             "must come with its feature_extractor (and the extractor with its reference)")


class _DistributionScorer:
    """FID or KID of any choice of one x̂0 per sample of a trace: every step's features are computed once."""

    def __init__(self, target: DistributionTarget, trace: X0Trace) -> None:
        extractor = target.feature_extractor or EmbeddedFeatureExtractor()
        reference = (embedded_reference_features() if target.reference_features is None
                     else target.reference_features).double().cpu()
        dim = reference.shape[1]
        if target.metric == "fid" and trace.n <= dim:
            raise FieldError("samples_per_seed", trace.n, f"samples per seed set are too few for FID in a {dim}-"
                             f"dimensional feature space; give more than {dim}, or use a KID target")
        self.metric = target.metric
        self.features = torch.stack([extractor(trace.image_x0[:, k]).double().cpu()
                                     for k in range(trace.num_steps)], dim=1)  # [n, K, d]
        self.reference = FeatureStatistics.from_features(reference) if self.metric == "fid" else KidReference(
            reference)
        self.full = self._score(extractor(trace.final_images).double().cpu())

    def _score(self, features: torch.Tensor) -> float:
        if isinstance(self.reference, FeatureStatistics):
            return fid(FeatureStatistics.from_features(features), self.reference)
        return kid(features, self.reference)

    def __call__(self, exit_step: torch.Tensor) -> float:
        return self._score(self.features[torch.arange(len(exit_step)), exit_step])


@dataclass(frozen=True)
class ExitSimulation:
    """One threshold simulated on a trace: mean NFE and the fidelity of the exit x̂0s to the full run.

    `psnr` is the PSNR of the mean squared error over all samples (what `target_psnr` constrains); `distribution`
    the FID or KID of the exits (what a `DistributionTarget` constrains); `mean_psnr` is
    the mean of per-sample PSNRs, as `metrics.fidelity` reports it. The mean of per-sample PSNRs is easy to game:
    a sample that never exits scores 80 dB and hides another that exits far too early; an MSE averaged over the
    samples is not fooled that way. `psnr_p10`: the 10th percentile of per-sample PSNR.
    """

    threshold: float
    nfe_mean: float
    psnr: float
    mean_psnr: float
    psnr_p10: float
    feature_distance: float | None
    distribution: float | None = None  # FID or KID of the exits, under a distribution target


@dataclass
class CalibrationResult:
    """A calibrated threshold and what it achieves.

    `met_target`: the target holds on the calibration seeds (it always can, unless a score is exactly 0 where
    exiting hurts: a threshold that never fires gives the full run). `heldout` comes from the same offline
    simulation on seeds not used for the choice, and `heldout_fidelity` from `metrics.fidelity` on its exit x̂0s
    (its `psnr` is the mean of per-sample PSNRs; see `ExitSimulation` for why the target uses the mean MSE).
    """

    monitor: str
    name: str
    threshold: float
    guardrails: dict[str, Any]
    num_steps: int
    target_psnr: float | None
    target_feature_distance: float | None
    target_distribution: dict[str, Any] | None  # metric and max_increase_pct of a DistributionTarget
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
        """The result as JSON-ready data (the per-candidate curve only if asked)."""
        data = asdict(self)
        if not with_curve:
            data.pop("curve")
        return data

    def default_entry(self) -> dict[str, Any]:
        """The record `calibrated_defaults.json` keeps for this monitor."""
        return {
            "threshold": self.threshold, "guardrails": self.guardrails, "target_psnr": self.target_psnr,
            "target_feature_distance": self.target_feature_distance,
            "target_distribution": self.target_distribution, "heldout_distribution": self.heldout.distribution,
            "calibration_nfe_mean": self.calibration.nfe_mean, "heldout_nfe_mean": self.heldout.nfe_mean,
            "heldout_psnr": self.heldout.psnr, "heldout_psnr_p10": self.heldout.psnr_p10,
            "heldout_feature_distance": self.heldout.feature_distance,
            "n_calibration": self.n_calibration, "n_heldout": self.n_heldout,
        }


def _calibration_monitor(monitor: str | Monitor, options: dict[str, dict[str, Any]] | None) -> ThresholdMonitor:
    if isinstance(monitor, Monitor):
        if not isinstance(monitor, ThresholdMonitor) or not monitor.calibratable:
            raise FieldError("monitor", monitor.name, "cannot be calibrated from a recorded trace (a wall-clock "
                             "budget or a composite); calibrate its quality monitors one by one")
        return monitor
    head, sep, rest = monitor.partition(",")
    name = head.partition(":")[0].strip()
    if name in MONITORS and not MONITORS[name].calibratable:
        raise FieldError("monitor", name, "cannot be calibrated from a recorded trace; a wall-clock budget "
                         "depends on the machine, not on x̂0")
    built = monitor_from_spec(f"{name}:1{sep}{rest}", options=options)  # the threshold is what we search
    if not isinstance(built, ThresholdMonitor) or not built.calibratable:
        raise FieldError("monitor", monitor, "is a composite; calibrate its monitors one by one")
    return built


def _candidates(monitor: ThresholdMonitor, scores: torch.Tensor, num_steps: int, grid_size: int) -> list[float]:
    """Thresholds from the most conservative (never or rarely fires) to the most aggressive."""
    finite = scores[torch.isfinite(scores)].double()
    if monitor.fires_above:  # budgets: score = NFE-like, fires when score >= threshold
        values = sorted({float(v) for v in finite.unique()} | {float(num_steps)}, reverse=True)
        if len(values) > grid_size:
            values = [values[int(i)] for i in torch.linspace(0, len(values) - 1, grid_size).round().long()]
        return values
    levels = torch.linspace(0, 1, grid_size, dtype=torch.float64)
    quantiles = torch.quantile(finite, levels) if finite.numel() else torch.zeros(0, dtype=torch.float64)
    return sorted({0.0} | {max(0.0, float(q)) for q in quantiles})


def _simulate(monitor: ThresholdMonitor, scores: torch.Tensor, threshold: float, mse: torch.Tensor,
              feature: torch.Tensor | None, distribution: _DistributionScorer | None
              ) -> tuple[ExitSimulation, torch.Tensor]:
    exit_step = monitor.simulate_exits(scores, threshold)
    rows = torch.arange(len(exit_step))
    exit_mse = mse[rows, exit_step].double()
    per_sample = psnr_of(exit_mse)
    return ExitSimulation(
        threshold=threshold,
        nfe_mean=float((exit_step + 1).double().mean()),
        psnr=float(psnr_of(exit_mse.mean())),
        mean_psnr=float(per_sample.mean()),
        psnr_p10=float(torch.quantile(per_sample, 0.1)),
        feature_distance=None if feature is None else float(feature[rows, exit_step].double().mean()),
        distribution=None if distribution is None else distribution(exit_step),
    ), exit_step


def calibrate_threshold(
    adapter: ModelAdapter,
    shape: Sequence[int],
    timesteps: Sequence[int] | torch.Tensor,
    monitor: str | Monitor,
    *,
    target_psnr: float | None = None,
    target_feature_distance: float | None = None,
    target_distribution: DistributionTarget | None = None,
    calibration_seeds: Sequence[int],
    heldout_seeds: Sequence[int],
    samples_per_seed: int = 16,
    batch_size: int = 64,
    feature_extractor: FeatureExtractor | None = None,
    monitor_options: dict[str, dict[str, Any]] | None = None,
    calibration_trace: X0Trace | None = None,
    heldout_trace: X0Trace | None = None,
    grid_size: int = 256,
    progress: bool = False,
    conditioning: Conditioning | None = None,
    decode: Decode | None = None,
    space: str | None = None,
    solver: Solver | None = None,
) -> CalibrationResult:
    """The threshold of `monitor` that exits earliest while the mean fidelity to the full run meets the target.

    `monitor` is a name or spec without threshold (`"x0-l2"`, `"sharpness,patience=2"`) or a ThresholdMonitor whose
    guardrails are kept (its threshold is replaced). Give exactly one target: `target_psnr` (PSNR in dB of the
    mean squared error, over the samples, of the exit x̂0 to the full run's sample on [0, 1]; >= target; see
    `ExitSimulation`), `target_feature_distance` (mean L2 distance of their features, <= target; default
    extractor: the embedded Fashion-MNIST net) or `target_distribution` (FID or KID of the exits at most X % above
    the full run's on the same seeds; see `DistributionTarget` and the module docstring).

    The full run is recorded once per seed set (`samples_per_seed` samples for each of `calibration_seeds`, then
    of `heldout_seeds`; pass `calibration_trace`/`heldout_trace` from `record_x0_trace` to share recordings between
    monitors). Candidate thresholds are `grid_size` quantiles of the scores seen on the calibration trace plus 0
    (budgets: every NFE); they are scanned from the most conservative and the scan stops at the first that misses
    the target, so the answer does not rest on a lucky bump of a noisy fidelity curve. Exits are simulated offline
    from the trace; see the module docstring for why that equals the online run. Held-out seeds report what the
    chosen threshold achieves on samples it was not chosen on.

    The full runs use `solver` (default DDIM). A conditional model samples with `conditioning`; a latent model
    passes `decode` (`LoadedModel.decode`) and calibrates in `space` (default: the spec's `space=` option, else
    `latent`; see the module docstring). The result's `monitor` spec then carries `space=image` where it applies.
    """
    if [target_psnr, target_feature_distance, target_distribution].count(None) != 2:
        raise ValueError("target_psnr, target_feature_distance, target_distribution: give exactly one target")
    if target_distribution is None:
        target = target_psnr if target_psnr is not None else target_feature_distance
        if not isinstance(target, (int, float)) or not math.isfinite(target) or (target_feature_distance is not None
                                                                                 and target < 0):
            name = "target_psnr" if target_psnr is not None else "target_feature_distance"
            raise FieldError(name, target, "is not a finite number (a distance must be >= 0)")
    overlap = sorted(set(calibration_seeds) & set(heldout_seeds))
    if overlap:
        raise FieldError("heldout_seeds", overlap, "are also calibration seeds; held-out seeds must be disjoint")
    if grid_size < 2:
        raise FieldError("grid_size", grid_size, "is below 2")
    if isinstance(monitor, str):
        monitor, spec_space = split_space(monitor)
        space = space or spec_space
    space = space or "latent"
    if space not in ("latent", "image"):
        raise FieldError("space", space, "is not one of latent, image")
    mon = _calibration_monitor(monitor, monitor_options)
    if target_feature_distance is not None and feature_extractor is None:
        feature_extractor = EmbeddedFeatureExtractor()

    def trace_of(seeds: Sequence[int], given: X0Trace | None, what: str) -> X0Trace:
        if given is not None:
            if sorted({s for s, _ in given.seeds}) != sorted(set(seeds)):
                raise FieldError(f"{what}_trace", sorted({s for s, _ in given.seeds}), "are the seeds it was "
                                 f"recorded for, not {what}_seeds {sorted(set(seeds))}")
            return given
        return record_x0_trace(adapter, shape, timesteps, list(seeds), samples_per_seed, batch_size=batch_size,
                               progress=progress, conditioning=conditioning, decode=decode, space=space,
                               solver=solver)

    cal, held = trace_of(calibration_seeds, calibration_trace, "calibration"), trace_of(heldout_seeds, heldout_trace,
                                                                                       "heldout")
    if cal.num_steps != held.num_steps or not torch.equal(cal.timesteps, held.timesteps):
        raise ValueError("heldout_trace: walked other timesteps than calibration_trace")
    num_steps = cal.num_steps

    def fidelity_matrices(trace: X0Trace) -> tuple[torch.Tensor, torch.Tensor | None]:
        return mse_matrix(trace), (feature_distance_matrix(trace, feature_extractor)
                                    if feature_extractor is not None else None)

    cal_dist = held_dist = None
    if target_distribution is not None:
        cal_dist, held_dist = _DistributionScorer(target_distribution, cal), _DistributionScorer(
            target_distribution, held)

    def meets_on(dist: _DistributionScorer | None) -> Callable[[ExitSimulation], bool]:
        if target_psnr is not None:
            return lambda s: s.psnr >= target_psnr
        if target_feature_distance is not None:
            return lambda s: s.feature_distance is not None and s.feature_distance <= target_feature_distance
        assert dist is not None and target_distribution is not None  # noqa: S101
        limit = dist.full * (1 + target_distribution.max_increase_pct / 100)
        return lambda s: s.distribution is not None and s.distribution <= limit

    meets = meets_on(cal_dist)
    cal_mse, cal_feat = fidelity_matrices(cal)
    cal_scores = mon.replay_scores(cal.step_infos(batch_size), cal.n, num_steps)
    curve: list[ExitSimulation] = []
    chosen: ExitSimulation | None = None
    for threshold in _candidates(mon, cal_scores, num_steps, grid_size):
        simulated, _ = _simulate(mon, cal_scores, threshold, cal_mse, cal_feat, cal_dist)
        curve.append(simulated)
        if not meets(simulated):
            break
        if chosen is None or simulated.nfe_mean < chosen.nfe_mean:
            chosen = simulated
    met = chosen is not None
    if chosen is None:  # not even the most conservative candidate meets it: keep that one and say so
        chosen = curve[0]

    held_mse, held_feat = fidelity_matrices(held)
    held_scores = mon.replay_scores(held.step_infos(batch_size), held.n, num_steps)
    held_sim, held_exit = _simulate(mon, held_scores, chosen.threshold, held_mse, held_feat, held_dist)
    held_fidelity = fidelity(held.exit_x0(held_exit), held.final_images, feature_extractor)
    final = mon.with_threshold(chosen.threshold)
    suffix = ",space=image" if space == "image" and decode is not None else ""
    return CalibrationResult(
        monitor=final.spec() + suffix, name=mon.name, threshold=chosen.threshold,
        guardrails=mon.guardrails.model_dump(exclude_defaults=True), num_steps=num_steps,
        target_psnr=target_psnr, target_feature_distance=target_feature_distance,
        target_distribution=None if target_distribution is None else {
            "metric": target_distribution.metric, "max_increase_pct": target_distribution.max_increase_pct},
        full_distribution=None if cal_dist is None or held_dist is None else {
            "calibration": cal_dist.full, "heldout": held_dist.full},
        met_target=met, calibration=chosen, heldout=held_sim, heldout_fidelity=held_fidelity,
        heldout_met_target=meets_on(held_dist)(held_sim),
        n_calibration=cal.n, n_heldout=held.n, calibration_seeds=sorted({s for s, _ in cal.seeds}),
        heldout_seeds=sorted({s for s, _ in held.seeds}), curve=curve,
    )


__all__ = [
    "CalibrationResult", "DistributionTarget", "ExitSimulation", "X0Trace", "calibrate_threshold",
    "feature_distance_matrix", "mse_matrix", "psnr_of", "record_x0_trace",
]
