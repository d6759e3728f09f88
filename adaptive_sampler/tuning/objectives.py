"""What a trial scores: the quality of one timestep list on a fixed set of seeds (common random numbers).

Every evaluation of every trial draws the same initial noise (sample i of chunk j comes from the stream
(seed + j, i)), so differences between trials are differences between schedules, not between noise draws.
Three objectives:

- `fid`, `kid`: FID (Heusel et al. 2017) / KID (Bińkowski et al. 2018) of the samples against the 10,000
  Fashion-MNIST test images in the embedded feature space (models with (1, 32, 32) samples only).
- `fidelity`: mean PSNR of each sample to the many-step DDIM result of the same noise (a cheap proxy that needs
  no reference data and works for any model). The references are computed once and cached on disk, keyed by the
  model's weights and scheduler config, the seeds and the reference step count.

Samples are drawn chunk by chunk; after each chunk the objective over the samples so far is passed to `on_rung`,
which is how a per-budget study reports successive sample counts to its pruner.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import piq
import torch

from adaptive_sampler.metrics import (
    EMBEDDED_IMAGE_SHAPE,
    FEATURE_DIM,
    EmbeddedFeatureExtractor,
    FeatureStatistics,
    KidReference,
    embedded_reference_features,
    embedded_reference_statistics,
    fid,
    kid,
    to_unit_range,
)
from adaptive_sampler.model_adapter import ModelAdapter
from adaptive_sampler.models import LoadedModel
from adaptive_sampler.policies import Uniform
from adaptive_sampler.sampler import sample
from adaptive_sampler.solvers import make_solver
from adaptive_sampler.timesteps import validate_timesteps
from adaptive_sampler.tuning.cache import DEFAULT_CACHE_DIR, cached_tensors

ObjectiveName = Literal["fid", "kid", "fidelity"]
_SSIM_KERNEL = 11


@dataclass(frozen=True)
class ObjectiveSpec:
    """An objective's name, its optimisation direction, an axis label and the fewest samples it is defined for."""

    name: str
    direction: Literal["minimize", "maximize"]
    label: str
    min_n: int


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "fid": ObjectiveSpec("fid", "minimize", "FID (embedded features, lower is better)", FEATURE_DIM + 1),
    "kid": ObjectiveSpec("kid", "minimize", "KID (embedded features, lower is better)", 2),
    "fidelity": ObjectiveSpec("fidelity", "maximize", "PSNR to the many-step reference (dB, higher is better)", 1),
}


def objective_spec(name: str) -> ObjectiveSpec:
    """The objective called `name` (fid, kid or fidelity)."""
    if name not in OBJECTIVES:
        raise ValueError(f"objective: {name!r} is not one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def check_objective(objective: str, sample_shape: Sequence[int]) -> ObjectiveSpec:
    """The objective's spec, if it can score samples of `sample_shape` (FID/KID need the embedded feature space)."""
    spec = objective_spec(objective)
    if objective in ("fid", "kid") and tuple(sample_shape) != EMBEDDED_IMAGE_SHAPE:
        raise ValueError(
            f"objective: {objective!r} scores samples in the embedded Fashion-MNIST feature space, which takes "
            f"{EMBEDDED_IMAGE_SHAPE}; this model's samples are {tuple(sample_shape)}; use objective 'fidelity'"
        )
    return spec


@dataclass(frozen=True)
class SeedSet:
    """A fixed set of samples, in chunks: chunk j holds `chunks[j]` samples drawn with seed `seed + j`."""

    seed: int
    chunks: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed: {self.seed} is negative; seeds are non-negative integers")
        if not self.chunks or any(c < 1 for c in self.chunks):
            raise ValueError(f"chunks: {self.chunks} must be a non-empty list of positive sample counts")

    @property
    def n(self) -> int:
        return sum(self.chunks)

    @property
    def seeds(self) -> range:
        return range(self.seed, self.seed + len(self.chunks))

    @property
    def rungs(self) -> tuple[int, ...]:
        """Cumulative sample counts after each chunk: the steps a pruned study reports at."""
        out, total = [], 0
        for c in self.chunks:
            total += c
            out.append(total)
        return tuple(out)

    @classmethod
    def split(cls, seed: int, n: int, parts: int, min_first: int = 1) -> SeedSet:
        """n samples in up to `parts` near-equal chunks, fewer if the first chunk would hold < `min_first`."""
        if n < 1:
            raise ValueError(f"n: {n} is not a positive number of samples")
        parts = max(1, min(parts, n // max(min_first, 1)))
        sizes = [n // parts + (1 if i < n % parts else 0) for i in range(parts)]
        return cls(seed, tuple(sizes))

    def overlaps(self, other: SeedSet) -> bool:
        return bool(set(self.seeds) & set(other.seeds))


def tuning_seeds(objective: str, n: int, seed: int) -> SeedSet:
    """The tuning set of an objective: 4 chunks (rungs) for fidelity and KID, 2 for FID (each rung must hold more
    samples than the feature dimension, so FID rungs come only with n > 2·128)."""
    spec = objective_spec(objective)
    if n < spec.min_n:
        raise ValueError(f"n: {n} tuning samples is below the {spec.min_n} that {objective} needs")
    if objective == "fid":
        return SeedSet.split(seed, n, 2, min_first=spec.min_n)
    return SeedSet.split(seed, n, 4, min_first=max(spec.min_n, 2))


def model_identity(model: LoadedModel) -> dict[str, object]:
    """What determines a model's samples besides the schedule: its weights, scheduler config and sample shape."""
    scheduler = json.dumps(model.scheduler_config, sort_keys=True, default=str)
    return {"name": model.name, "weights_sha256": model.weights_sha256,
            "scheduler_sha256": hashlib.sha256(scheduler.encode()).hexdigest(),
            "sample_shape": list(model.sample_shape)}


@dataclass(frozen=True)
class Evaluation:
    """An objective value (`value`, in the objective's direction), its companion metrics, and what it cost."""

    value: float
    metrics: dict[str, float]
    n: int
    nfe: float
    wall_s: float


@functools.lru_cache(maxsize=1)
def _embedded_kid_reference() -> KidReference:
    return KidReference(embedded_reference_features())


@functools.lru_cache(maxsize=1)
def _embedded_statistics() -> FeatureStatistics:
    return embedded_reference_statistics("test")


@dataclass
class ScheduleEvaluator:
    """Scores timestep lists for one model, solver, objective and seed set.

    `evaluate(timesteps, on_rung)` samples the seed set chunk by chunk with `solver` (η = 0) and returns an
    `Evaluation`; after each chunk, `on_rung(samples_so_far, value_so_far)` is called where the objective is defined
    (it may raise `optuna.TrialPruned`). For `fidelity`, the references (`reference_steps` uniform steps of the same
    solver from the same noise) are cached under `cache_dir` (None: in memory only).
    """

    model: LoadedModel
    objective: str
    seeds: SeedSet
    solver: str = "ddim"
    reference_steps: int = 200
    batch_size: int = 64
    network_rows: int | None = 8
    cache_dir: Path | None = DEFAULT_CACHE_DIR
    adapter: ModelAdapter | None = None
    _references: dict[int, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.spec = objective_spec(self.objective)
        self.solver_impl = make_solver(self.solver)
        self.model_adapter: ModelAdapter = self.adapter or self.model.adapter(network_rows=self.network_rows)
        T = self.model_adapter.schedule.num_train_timesteps
        if not 2 <= self.reference_steps <= T:
            raise ValueError(f"reference_steps: {self.reference_steps} is outside [2, {T}] (the training timesteps)")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: {self.batch_size} is not a positive integer")
        if self.seeds.n < self.spec.min_n:
            raise ValueError(f"n: {self.seeds.n} samples is below the {self.spec.min_n} that {self.objective} needs")
        check_objective(self.objective, self.model.sample_shape)
        if self.objective in ("fid", "kid"):
            self._features = EmbeddedFeatureExtractor()

    @property
    def direction(self) -> str:
        return self.spec.direction

    def _sample(self, timesteps: torch.Tensor, chunk: int) -> torch.Tensor:
        result = sample(self.model_adapter, timesteps, self.model.sample_shape, self.seeds.chunks[chunk],
                        batch_size=self.batch_size, seed=self.seeds.seed + chunk, solver=self.solver_impl)
        return result.samples

    def reference(self, chunk: int) -> torch.Tensor:
        """The many-step result for chunk `chunk` of the seed set (cached on disk and in memory)."""
        if chunk not in self._references:
            schedule = self.model_adapter.schedule
            steps = Uniform().timesteps(self.reference_steps, schedule)
            key = {"model": model_identity(self.model), "solver": self.solver, "policy": "uniform",
                   "reference_steps": self.reference_steps, "seed": self.seeds.seed + chunk,
                   "n": self.seeds.chunks[chunk], "num_train_timesteps": schedule.num_train_timesteps}
            tensors = cached_tensors(self.cache_dir, "fidelity-references", key,
                                     lambda: {"samples": self._sample(steps, chunk)})
            self._references[chunk] = tensors["samples"]
        return self._references[chunk]

    def prepare(self) -> None:
        """Compute (or load) everything that does not depend on the schedule: references, KID terms."""
        if self.objective == "fidelity":
            for chunk in range(len(self.seeds.chunks)):
                self.reference(chunk)
        else:
            _embedded_kid_reference()

    def evaluate(self, timesteps: Sequence[int] | torch.Tensor,
                 on_rung: Callable[[int, float], None] | None = None) -> Evaluation:
        """Sample the seed set over `timesteps` and score it (see the class docstring)."""
        ts = validate_timesteps(timesteps, self.model_adapter.schedule.num_train_timesteps)
        start = time.perf_counter()
        parts: list[torch.Tensor] = []
        psnr_sum = ssim_sum = 0.0
        metrics: dict[str, float] = {}
        value = float("nan")
        for chunk, rung in enumerate(self.seeds.rungs):
            samples = self._sample(ts, chunk)
            if self.objective == "fidelity":
                x, y = to_unit_range(samples), to_unit_range(self.reference(chunk))
                psnr_sum += float(piq.psnr(x, y, data_range=1.0, reduction="sum"))
                metrics = {"psnr": psnr_sum / rung}
                if min(x.shape[-2:]) >= _SSIM_KERNEL:  # piq's SSIM window needs images at least 11 pixels wide
                    ssim_sum += float(piq.ssim(x, y, data_range=1.0, reduction="sum"))
                    metrics["ssim"] = ssim_sum / rung
                value = metrics["psnr"]
            else:
                parts.append(self._features(samples).cpu())
                features = torch.cat(parts)
                metrics = {"kid": kid(features, _embedded_kid_reference())}
                if rung >= OBJECTIVES["fid"].min_n:
                    metrics["fid"] = fid(FeatureStatistics.from_features(features), _embedded_statistics())
                value = metrics.get(self.objective, float("nan"))
            if on_rung is not None and rung >= self.spec.min_n and rung < self.seeds.n:
                on_rung(rung, value)
        return Evaluation(value=value, metrics=metrics, n=self.seeds.n, nfe=float(len(ts)),
                          wall_s=time.perf_counter() - start)
