"""What a trial scores: the quality of one timestep list on a fixed set of seeds (common random numbers).

Every evaluation of every trial draws the same initial noise (sample i of chunk j comes from the stream
(seed + j, i)), so differences between trials are differences between schedules, not between noise draws.

Objectives are plug-ins: an `Objective` has a name, a direction, the fewest samples it is defined for, a
sample-shape check, its tuning seed set, and one abstract method, `evaluate`, which turns the samples of each chunk
into a running `Score`. `register_objective` adds one to `OBJECTIVES` (name -> object); `get_objective` looks one
up, and `Objective.configured(features, reference, fid_limit)` binds it to a metric back-end (see
`adaptive_sampler.metrics.backends`) and reference statistics (`tune --features/--reference/--fid-limit`). The
shipped ones score with a `MetricObjective`: a metric of the back-end's `MetricAccumulator`, chunk by chunk.

- `fid`, `kid`: FID (Heusel et al. 2017) / KID (Bińkowski et al. 2018) in a back-end's feature space: by default
  the embedded Fashion-MNIST one against its 10,000 test images ((1, 32, 32) models); with `--features
  inception:PATH|clip:PATH --reference ref.npz`, any images (KID needs the reference's features: embedded only).
- `fidelity`: mean PSNR of each sample to the many-step DDIM result of the same noise (a cheap proxy that needs
  no reference data and works for any model); `fidelity-lpips` the mean LPIPS to it (local LPIPS weights). The
  references are computed once and cached on disk, keyed by the model's weights and scheduler config, the seeds,
  the conditioning and the reference step count.
- `clip-score`: mean CLIP score of each sample against its prompt (`--features clip:PATH`).
- `label`: the fraction of samples the embedded classifier puts in their requested class.
- `clip-at-fid`: CLIP score at a fixed FID (both in the CLIP space, `--features clip:PATH --reference ref.npz
  --fid-limit F`): the CLIP score where FID ≤ F, else F - FID (< 0), so every schedule within the FID limit ranks
  above every one outside it — guidance-aware quality under a distribution constraint.

Samples are drawn chunk by chunk; after each chunk the objective over the samples so far is passed to `on_rung`,
which is how a per-budget study reports successive sample counts to its pruner.
"""

from __future__ import annotations

import abc
import copy
import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.metrics import (
    EMBEDDED_IMAGE_SHAPE,
    FEATURE_DIM,
    MetricAccumulator,
    MetricBackend,
    Reference,
    ScoringBatch,
    make_backend,
    resolve_reference,
)
from adaptive_sampler.model_adapter import Conditioning, ModelAdapter
from adaptive_sampler.models import LoadedModel
from adaptive_sampler.policies import Uniform
from adaptive_sampler.sampler import sample
from adaptive_sampler.solvers import make_solver
from adaptive_sampler.timesteps import validate_timesteps
from adaptive_sampler.tuning.cache import DEFAULT_CACHE_DIR, cached_tensors


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
    number of chunks the tuning samples come in (the pruner's steps). A configured copy (`configured`) may set
    them per instance (FID needs more samples than its feature dimension).
    """

    name: ClassVar[str]
    direction: ClassVar[Literal["minimize", "maximize"]]
    label: ClassVar[str]
    min_n: int = 1
    default_n: int = 64
    default_heldout_n: int = 256
    rungs: int = 4
    uses_reference: ClassVar[bool] = False  # scores against `ScheduleEvaluator.reference` (a study key then)

    def configured(self, features: str | None = None, reference: Path | None = None,
                   fid_limit: float | None = None) -> Objective:
        """This objective bound to a metric back-end spec, reference statistics and an FID limit; the default
        takes none of them (FieldError naming the one given)."""
        for name, value in (("features", features), ("reference", reference), ("fid_limit", fid_limit)):
            if value is not None:
                raise FieldError(name, str(value) if isinstance(value, Path) else value,
                                 f"is not used by objective {self.name!r}")
        return self

    def study_identity(self) -> dict[str, object]:
        """What besides the settings' STUDY_KEYS a resumed study must share (e.g. the reference file); default:
        nothing."""
        return {}

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
    """What determines a model's samples besides the schedule: its weights, scheduler config and sample shape, and
    the prompts or labels it is conditioned on (absent for an unconditional model)."""
    scheduler = json.dumps(model.scheduler_config, sort_keys=True, default=str)
    identity: dict[str, object] = {"name": model.name, "weights_sha256": model.weights_sha256,
                                   "scheduler_sha256": hashlib.sha256(scheduler.encode()).hexdigest(),
                                   "sample_shape": list(model.sample_shape)}
    if model.conditions is not None:
        identity["conditions"] = model.conditions.identity()
    return identity


@dataclass(frozen=True)
class Evaluation:
    """An objective value (`value`, in the objective's direction), its companion metrics, and what it cost."""

    value: float
    metrics: dict[str, float]
    n: int
    nfe: float
    wall_s: float


@dataclass
class ScheduleEvaluator:
    """Scores timestep lists for one model, solver, objective and seed set.

    `evaluate(timesteps, on_rung)` samples the seed set chunk by chunk with `solver` (η = 0) and returns an
    `Evaluation`; after each chunk, `on_rung(samples_so_far, value_so_far)` is called where the objective is defined
    (it may raise `optuna.TrialPruned`). `objective` is a registered objective's name or an `Objective` (e.g. a
    `configured` one). `reference(chunk)` is the many-step result of a chunk (`reference_steps` uniform steps of the
    same solver from the same noise), cached under `cache_dir` (None: in memory only); the fidelity objectives score
    against it. `conditioning` is passed to the sampler for every chunk (sample i of a chunk takes row i), and
    sample i of a chunk is scored against `prompts[i % P]` and `labels[i % L]` (`conditions`).
    """

    model: LoadedModel
    objective: str | Objective
    seeds: SeedSet
    solver: str = "ddim"
    reference_steps: int = 200
    batch_size: int = 64
    network_rows: int | None = 8
    cache_dir: Path | None = DEFAULT_CACHE_DIR
    adapter: ModelAdapter | None = None
    conditioning: Conditioning | None = None
    prompts: Sequence[str] | None = None
    labels: Sequence[int] | None = None
    _references: dict[int, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.scorer: Objective = (self.objective if isinstance(self.objective, Objective)
                                  else get_objective(self.objective))
        self.solver_impl = make_solver(self.solver)
        self.model_adapter: ModelAdapter = self.adapter or self.model.adapter(network_rows=self.network_rows)
        T = self.model_adapter.schedule.num_train_timesteps
        if not 2 <= self.reference_steps <= T:
            raise FieldError("reference_steps", self.reference_steps, f"is outside [2, {T}] (the training timesteps)")
        if self.batch_size < 1:
            raise FieldError("batch_size", self.batch_size, "is not a positive integer")
        if self.seeds.n < self.scorer.min_n:
            raise FieldError("n", self.seeds.n, f"samples is below the {self.scorer.min_n} that {self.scorer.name} "
                                                "needs")
        self.scorer.check_shape(self.model.image_shape)
        bound = self.model.conditions  # a model bound to prompts or labels (LoadedModel.with_conditions)
        if bound is not None:
            self.conditioning = self.conditioning or bound.conditioning
            self.prompts = self.prompts or bound.prompts
            self.labels = self.labels or bound.labels

    @property
    def direction(self) -> str:
        return self.scorer.direction

    def sample(self, timesteps: torch.Tensor, chunk: int) -> torch.Tensor:
        """Chunk `chunk` of the seed set sampled over `timesteps` with the evaluator's solver, as images (a latent
        model's decoded)."""
        result = sample(self.model_adapter, timesteps, self.model.sample_shape, self.seeds.chunks[chunk],
                        batch_size=self.batch_size, seed=self.seeds.seed + chunk, solver=self.solver_impl,
                        conditioning=self.conditioning)
        if self.model.decoder is None:
            return result.samples
        return self.model.decode(result.samples.to(self.model_adapter.device), self.network_rows or 8).cpu()

    def conditions(self, chunk: int) -> tuple[list[str] | None, list[int] | None]:
        """The prompt and the class label of each sample of chunk `chunk` (None where the run has none)."""
        n = self.seeds.chunks[chunk]
        prompts = [self.prompts[i % len(self.prompts)] for i in range(n)] if self.prompts else None
        labels = [int(self.labels[i % len(self.labels)]) for i in range(n)] if self.labels else None
        return prompts, labels

    def reference(self, chunk: int) -> torch.Tensor:
        """The many-step result for chunk `chunk` of the seed set (cached on disk and in memory)."""
        if chunk not in self._references:
            schedule = self.model_adapter.schedule
            steps = Uniform().timesteps(self.reference_steps, schedule)
            key: dict[str, object] = {
                "model": model_identity(self.model), "solver": self.solver, "policy": "uniform",
                "reference_steps": self.reference_steps, "seed": self.seeds.seed + chunk,
                "n": self.seeds.chunks[chunk], "num_train_timesteps": schedule.num_train_timesteps}
            if self.conditioning is not None:  # the same noise under other prompts is another reference
                prompts, labels = self.conditions(chunk)
                key["conditions"] = {"prompts": prompts, "labels": labels,
                                     "guidance_scale": self.conditioning.guidance_scale}
            tensors = cached_tensors(self.cache_dir, "fidelity-references", key,
                                     lambda: {"samples": self.sample(steps, chunk)})
            self._references[chunk] = tensors["samples"]
        return self._references[chunk]

    def prepare(self) -> None:
        """Compute (or load) everything that does not depend on the schedule (the objective's `prepare`)."""
        self.scorer.prepare(self)

    def evaluate(self, timesteps: Sequence[int | float] | torch.Tensor,
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


@functools.lru_cache(maxsize=4)
def _backend(spec: str) -> MetricBackend:
    """One back-end per spec and process: tuning and held-out scoring share its network (and CLIP, its load)."""
    return make_backend(spec)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class MetricObjective(Objective):
    """A metric of a back-end's `MetricAccumulator` over the chunks so far (see the module docstring).

    Subclasses set `metric` (the key of `MetricAccumulator.values`) and `default_features` (the back-end when
    `--features` is not given; None: it must be given, one of `allowed`). `value` turns the metrics into the
    objective (default: `metrics[metric]`, NaN while undefined). A `configured` copy holds the spec, the reference
    path and the FID limit; the back-end and the reference load on first use, once per process.
    """

    metric: ClassVar[str]
    default_features: ClassVar[str | None]
    allowed: ClassVar[tuple[str, ...]]  # spec prefixes this objective can score with
    needs_features: ClassVar[bool] = False  # FID/KID: the back-end's feature space and a reference
    uses_fid: ClassVar[bool] = False  # defined only for more samples than the feature dimension
    features: str | None = None
    reference_path: Path | None = None
    fid_limit: float | None = None

    def _allowed(self) -> str:
        return " or ".join(a + "PATH" if a.endswith(":") else a for a in self.allowed)

    @property
    def spec(self) -> str:
        spec = self.features or self.default_features
        if spec is None:
            raise FieldError("features", None, f"given; objective {self.name!r} needs --features {self._allowed()}")
        return spec

    def configured(self, features: str | None = None, reference: Path | None = None,
                   fid_limit: float | None = None) -> Objective:
        out = copy.copy(self)
        out.__dict__.pop("reference_stats", None)  # loaded for the unconfigured objective, if it ever was
        out.features, out.reference_path, out.fid_limit = features, reference, fid_limit
        spec = out.spec
        if not any(spec == a or (a.endswith(":") and spec.startswith(a)) for a in self.allowed):
            raise FieldError("features", spec, f"cannot give objective {self.name!r} its metric {self.metric!r}; "
                                               f"use {self._allowed()}")
        if reference is not None and not self.needs_features:
            raise FieldError("reference", str(reference), f"is not used by objective {self.name!r}")
        if self.needs_features and reference is None and not spec == "embedded":
            raise FieldError("reference", None, f"given; objective {self.name!r} with --features {spec} needs "
                                                "reference statistics: make them with `adaptive-sampler stats "
                                                f"--images DIR --features {spec} --out ref.npz`")
        if fid_limit is not None and self.name != "clip-at-fid":
            raise FieldError("fid_limit", fid_limit, f"is not used by objective {self.name!r}")
        dim = FEATURE_DIM if spec == "embedded" else out.backend.dim  # the embedded net loads only when used
        if self.uses_fid and dim is not None:
            out.min_n = max(self.min_n, dim + 1)
            out.default_n = max(self.default_n, self.rungs * out.min_n)
        return out

    @property
    def backend(self) -> MetricBackend:
        return _backend(self.spec)

    @functools.cached_property
    def reference_stats(self) -> Reference | None:
        if not self.needs_features:
            return None
        reference = resolve_reference(self.backend, self.reference_path)
        if self.metric == "kid" and (reference is None or reference.features is None):
            raise FieldError("objective", self.name, "needs the reference's features, which an .npz (mu, sigma) "
                                                     "does not hold; use objective 'fid' with --reference")
        return reference

    def study_identity(self) -> dict[str, object]:
        if self.features is None and self.reference_path is None and self.fid_limit is None:
            return {}  # the objective's own back-end: the study config of today
        identity: dict[str, object] = {"features": self.spec}
        if self.reference_path is not None:
            identity["reference_sha256"] = _sha256(self.reference_path)
        if self.fid_limit is not None:
            identity["fid_limit"] = self.fid_limit
        return identity

    def check_shape(self, sample_shape: Sequence[int]) -> None:
        if self.features is None and self.spec in ("embedded", "label") and \
                tuple(sample_shape) != EMBEDDED_IMAGE_SHAPE:
            raise FieldError(
                "objective", self.name, f"scores samples in the embedded Fashion-MNIST feature space, which takes "
                f"{EMBEDDED_IMAGE_SHAPE}; this model's samples are {tuple(sample_shape)}; use objective 'fidelity' "
                "or --features inception:PATH|clip:PATH with --reference"
            )
        self.backend.check_shape(sample_shape)

    def prepare(self, evaluator: ScheduleEvaluator) -> None:
        if self.reference_stats is not None:
            _ = self.reference_stats.kid_reference
        if self.backend.needs_reference_images:
            for chunk in range(len(evaluator.seeds.chunks)):
                evaluator.reference(chunk)

    def value(self, metrics: dict[str, float]) -> float:
        return metrics.get(self.metric, math.nan)

    def evaluate(self, chunks: Iterable[tuple[int, torch.Tensor]], evaluator: ScheduleEvaluator) -> Iterator[Score]:
        backend = self.backend
        accumulator = MetricAccumulator(backend, self.reference_stats)
        for chunk, samples in chunks:
            prompts, labels = evaluator.conditions(chunk)
            accumulator.add(ScoringBatch(samples, prompts=prompts, labels=labels,
                                         reference_images=evaluator.reference(chunk)
                                         if backend.needs_reference_images else None))
            metrics = accumulator.values(precision_recall=False)
            yield Score(self.value(metrics), metrics)


class FidObjective(MetricObjective):
    name = "fid"
    direction = "minimize"
    label = "FID (lower is better)"
    metric = "fid"
    default_features = "embedded"
    allowed = ("embedded", "inception:", "clip:")
    needs_features = True
    uses_fid = True
    min_n = 129  # more samples than the embedded feature dimension (128): a full-rank covariance
    # At 6-10 steps FID on 512 samples moves more between sample sets than good lists differ, and a search keeps
    # the list that fits the noise; with 2,048 the same searches beat the best static list by 21-39 % held out
    # (README, "Search methods").
    default_n = 2048
    default_heldout_n = 500
    rungs = 2  # each rung must hold more samples than the feature dimension


class KidObjective(MetricObjective):
    name = "kid"
    direction = "minimize"
    label = "KID (embedded features, lower is better)"
    metric = "kid"
    default_features = "embedded"
    allowed = ("embedded",)
    needs_features = True
    min_n = 2
    default_n = 256
    default_heldout_n = 500


class FidelityObjective(MetricObjective):
    """Mean PSNR (and SSIM, for images at least 11 pixels wide) to the evaluator's many-step reference."""

    name = "fidelity"
    direction = "maximize"
    label = "PSNR to the many-step reference (dB, higher is better)"
    uses_reference = True
    metric = "psnr"
    default_features = "fidelity"
    allowed = ("fidelity", "fidelity:")


class FidelityLpipsObjective(MetricObjective):
    """Mean LPIPS to the evaluator's many-step reference (LPIPS weights from local files)."""

    name = "fidelity-lpips"
    direction = "minimize"
    label = "LPIPS to the many-step reference (lower is better)"
    uses_reference = True
    metric = "lpips"
    default_features = "fidelity:lpips"
    allowed = ("fidelity:",)


class ClipScoreObjective(MetricObjective):
    """Mean CLIP score of each sample against its prompt (needs prompts)."""

    name = "clip-score"
    direction = "maximize"
    label = "CLIP score (100 · cos, higher is better)"
    metric = "clip_score"
    default_features = None
    allowed = ("clip:",)


class LabelObjective(MetricObjective):
    """The fraction of samples the embedded classifier puts in their requested class (needs labels)."""

    name = "label"
    direction = "maximize"
    label = "label agreement (embedded classifier, higher is better)"
    metric = "label_agreement"
    default_features = "label"
    allowed = ("label",)


class ClipAtFidObjective(MetricObjective):
    """CLIP score at a fixed FID in the CLIP space (see the module docstring): CLIP score where FID ≤ `fid_limit`,
    else `fid_limit` - FID."""

    name = "clip-at-fid"
    direction = "maximize"
    label = "CLIP score at FID ≤ limit (FID excess below 0)"
    metric = "fid-constraint"
    default_features = None
    allowed = ("clip:",)
    needs_features = True
    uses_fid = True
    default_n = 64
    rungs = 2

    def configured(self, features: str | None = None, reference: Path | None = None,
                   fid_limit: float | None = None) -> Objective:
        if fid_limit is None or not fid_limit > 0:
            raise FieldError("fid_limit", fid_limit, f"must be a positive FID for objective {self.name!r} (the FID "
                                                     "that the CLIP score is maximised under)")
        return super().configured(features, reference, fid_limit)

    def value(self, metrics: dict[str, float]) -> float:
        if "fid" not in metrics or "clip_score" not in metrics or self.fid_limit is None:
            return math.nan
        excess = metrics["fid"] - self.fid_limit
        return metrics["clip_score"] if excess <= 0 else -excess


for _objective in (FidObjective(), KidObjective(), FidelityObjective(), FidelityLpipsObjective(),
                   ClipScoreObjective(), LabelObjective(), ClipAtFidObjective()):
    register_objective(_objective)
