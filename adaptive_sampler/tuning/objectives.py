"""What a trial scores: the quality of one timestep list on a fixed set of seeds (common random numbers).

Every evaluation of every trial draws the same initial noise (sample i of chunk j comes from the stream
(seed + j, i)), so differences between trials are differences between schedules, not between noise draws.

Objectives are plug-ins: an `Objective` has a name, a direction, the fewest samples it is defined for, a
sample-shape check, its tuning seed set, and one abstract method, `evaluate`, which turns the samples of each chunk
into a running `Score`. `register_objective` adds one to `OBJECTIVES` (name -> object); `get_objective` looks one
up. Three ship here:

- `fid`, `kid`: FID (Heusel et al. 2017) / KID (Bińkowski et al. 2018) of the samples against the 10,000
  Fashion-MNIST test images in the embedded feature space (models with (1, 32, 32) samples only).
- `fidelity`: mean PSNR of each sample to the many-step DDIM result of the same noise (a cheap proxy that needs
  no reference data and works for any model). The references are computed once and cached on disk, keyed by the
  model's weights and scheduler config, the seeds and the reference step count.

Samples are drawn chunk by chunk; after each chunk the objective over the samples so far is passed to `on_rung`,
which is how a per-budget study reports successive sample counts to its pruner.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import piq
import torch

from adaptive_sampler.errors import FieldError
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

_SSIM_KERNEL = 11


@dataclass(frozen=True)
class SeedSet:
    """A fixed set of samples, in chunks: chunk j holds `chunks[j]` samples drawn with seed `seed + j`."""

    seed: int
    chunks: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise FieldError("seed", self.seed, "is negative; seeds are non-negative integers")
        if not self.chunks or any(c < 1 for c in self.chunks):
            raise FieldError("chunks", self.chunks, "must be a non-empty list of positive sample counts")

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
            raise FieldError("n", n, "is not a positive number of samples")
        parts = max(1, min(parts, n // max(min_first, 1)))
        sizes = [n // parts + (1 if i < n % parts else 0) for i in range(parts)]
        return cls(seed, tuple(sizes))

    def overlaps(self, other: SeedSet) -> bool:
        return bool(set(self.seeds) & set(other.seeds))

@dataclass(frozen=True)
class Score:
    """An objective's value over the samples scored so far (in its direction), with companion metrics."""

    value: float
    metrics: dict[str, float]


class Objective(abc.ABC):
    """What a trial optimises, as a plug-in (register it with `register_objective`).

    Subclasses set `name`, `direction` and `label` and implement `evaluate`; the rest are defaults and no-op hooks.
    `min_n` is the fewest samples the objective is defined for (no value is reported to the pruner before that),
    `default_n` / `default_heldout_n` the tuning and held-out sample counts when none are given, and `rungs` the
    number of chunks the tuning samples come in (the pruner's steps).
    """

    name: ClassVar[str]
    direction: ClassVar[Literal["minimize", "maximize"]]
    label: ClassVar[str]
    min_n: ClassVar[int] = 1
    default_n: ClassVar[int] = 64
    default_heldout_n: ClassVar[int] = 256
    rungs: ClassVar[int] = 4
    uses_reference: ClassVar[bool] = False  # scores against `ScheduleEvaluator.reference` (a study key then)

    def check_shape(self, sample_shape: Sequence[int]) -> None:
        """Raise ValueError (naming `objective`) if samples of `sample_shape` cannot be scored; default: any."""
        return None

    def tuning_seeds(self, n: int, seed: int) -> SeedSet:
        """The tuning set: n samples in up to `rungs` chunks, each at least `min_n` (and 2) samples."""
        if n < self.min_n:
            raise FieldError("n", n, f"tuning samples is below the {self.min_n} that {self.name} needs")
        return SeedSet.split(seed, n, self.rungs, min_first=max(self.min_n, 2))

    def prepare(self, evaluator: ScheduleEvaluator) -> None:
        """Compute what does not depend on the schedule (references, reference statistics); default: nothing."""
        return None

    @abc.abstractmethod
    def evaluate(self, chunks: Iterable[tuple[int, torch.Tensor]], evaluator: ScheduleEvaluator) -> Iterator[Score]:
        """Yield the score over the samples so far after each `(chunk index, samples in [-1, 1])` of `chunks`.

        `chunks` is lazy: a chunk is sampled only when asked for, so a pruned trial stops sampling."""


OBJECTIVES: dict[str, Objective] = {}


def register_objective(objective: Objective) -> Objective:
    """Add `objective` to `OBJECTIVES` under its name (replacing one of the same name); returns it."""
    OBJECTIVES[objective.name] = objective
    return objective


def get_objective(name: str) -> Objective:
    """The registered objective called `name`."""
    if name not in OBJECTIVES:
        raise FieldError("objective", name, f"is not one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


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


@functools.lru_cache(maxsize=1)
def _embedded_extractor() -> EmbeddedFeatureExtractor:
    return EmbeddedFeatureExtractor()


@dataclass
class ScheduleEvaluator:
    """Scores timestep lists for one model, solver, objective and seed set.

    `evaluate(timesteps, on_rung)` samples the seed set chunk by chunk with `solver` (η = 0) and returns an
    `Evaluation`; after each chunk, `on_rung(samples_so_far, value_so_far)` is called where the objective is defined
    (it may raise `optuna.TrialPruned`). `objective` names a registered `Objective`. `reference(chunk)` is the
    many-step result of a chunk (`reference_steps` uniform steps of the same solver from the same noise), cached
    under `cache_dir` (None: in memory only); the fidelity objective scores against it.
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
        self.scorer: Objective = get_objective(self.objective)
        self.solver_impl = make_solver(self.solver)
        self.model_adapter: ModelAdapter = self.adapter or self.model.adapter(network_rows=self.network_rows)
        T = self.model_adapter.schedule.num_train_timesteps
        if not 2 <= self.reference_steps <= T:
            raise FieldError("reference_steps", self.reference_steps, f"is outside [2, {T}] (the training timesteps)")
        if self.batch_size < 1:
            raise FieldError("batch_size", self.batch_size, "is not a positive integer")
        if self.seeds.n < self.scorer.min_n:
            raise FieldError("n", self.seeds.n, f"samples is below the {self.scorer.min_n} that {self.objective} needs")
        self.scorer.check_shape(self.model.sample_shape)

    @property
    def direction(self) -> str:
        return self.scorer.direction

    def sample(self, timesteps: torch.Tensor, chunk: int) -> torch.Tensor:
        """Chunk `chunk` of the seed set sampled over `timesteps` with the evaluator's solver."""
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
                                     lambda: {"samples": self.sample(steps, chunk)})
            self._references[chunk] = tensors["samples"]
        return self._references[chunk]

    def prepare(self) -> None:
        """Compute (or load) everything that does not depend on the schedule (the objective's `prepare`)."""
        self.scorer.prepare(self)

    def evaluate(self, timesteps: Sequence[int] | torch.Tensor,
                 on_rung: Callable[[int, float], None] | None = None) -> Evaluation:
        """Sample the seed set over `timesteps` and score it (see the class docstring)."""
        ts = validate_timesteps(timesteps, self.model_adapter.schedule.num_train_timesteps)
        start = time.perf_counter()
        chunks = ((chunk, self.sample(ts, chunk)) for chunk in range(len(self.seeds.chunks)))
        score = Score(float("nan"), {})
        for rung, score in zip(self.seeds.rungs, self.scorer.evaluate(chunks, self), strict=False):
            if on_rung is not None and rung >= self.scorer.min_n and rung < self.seeds.n:
                on_rung(rung, score.value)
        return Evaluation(value=score.value, metrics=score.metrics, n=self.seeds.n, nfe=float(len(ts)),
                          wall_s=time.perf_counter() - start)


class EmbeddedFeatureObjective(Objective):
    """FID or KID in the embedded Fashion-MNIST feature space; reports both where each is defined."""

    default_heldout_n = 500

    def check_shape(self, sample_shape: Sequence[int]) -> None:
        if tuple(sample_shape) != EMBEDDED_IMAGE_SHAPE:
            raise FieldError(
                "objective", self.name, f"scores samples in the embedded Fashion-MNIST feature space, which takes "
                f"{EMBEDDED_IMAGE_SHAPE}; this model's samples are {tuple(sample_shape)}; use objective 'fidelity'"
            )

    def prepare(self, evaluator: ScheduleEvaluator) -> None:
        _embedded_kid_reference()

    def evaluate(self, chunks: Iterable[tuple[int, torch.Tensor]], evaluator: ScheduleEvaluator) -> Iterator[Score]:
        extractor = _embedded_extractor()
        parts: list[torch.Tensor] = []
        for _chunk, samples in chunks:
            parts.append(extractor(samples).cpu())
            features = torch.cat(parts)
            metrics = {"kid": kid(features, _embedded_kid_reference())}
            if len(features) >= FidObjective.min_n:
                metrics["fid"] = fid(FeatureStatistics.from_features(features), _embedded_statistics())
            yield Score(metrics.get(self.name, float("nan")), metrics)


class FidObjective(EmbeddedFeatureObjective):
    name = "fid"
    direction = "minimize"
    label = "FID (embedded features, lower is better)"
    min_n = FEATURE_DIM + 1  # a full-rank covariance
    default_n = 512
    rungs = 2  # each rung must hold more samples than the feature dimension


class KidObjective(EmbeddedFeatureObjective):
    name = "kid"
    direction = "minimize"
    label = "KID (embedded features, lower is better)"
    min_n = 2
    default_n = 256


class FidelityObjective(Objective):
    """Mean PSNR (and SSIM, for images at least 11 pixels wide) to the evaluator's many-step reference."""

    name = "fidelity"
    direction = "maximize"
    label = "PSNR to the many-step reference (dB, higher is better)"
    uses_reference = True

    def prepare(self, evaluator: ScheduleEvaluator) -> None:
        for chunk in range(len(evaluator.seeds.chunks)):
            evaluator.reference(chunk)

    def evaluate(self, chunks: Iterable[tuple[int, torch.Tensor]], evaluator: ScheduleEvaluator) -> Iterator[Score]:
        psnr_sum = ssim_sum = 0.0
        n = 0
        for chunk, samples in chunks:
            x, y = to_unit_range(samples), to_unit_range(evaluator.reference(chunk))
            n += len(x)
            psnr_sum += float(piq.psnr(x, y, data_range=1.0, reduction="sum"))
            metrics = {"psnr": psnr_sum / n}
            if min(x.shape[-2:]) >= _SSIM_KERNEL:  # piq's SSIM window needs images at least 11 pixels wide
                ssim_sum += float(piq.ssim(x, y, data_range=1.0, reduction="sum"))
                metrics["ssim"] = ssim_sum / n
            yield Score(metrics["psnr"], metrics)


for _objective in (FidObjective(), KidObjective(), FidelityObjective()):
    register_objective(_objective)
