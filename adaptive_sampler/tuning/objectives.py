"""What a trial scores: the quality of one timestep list on a fixed seed set (`tuning.seeds`), as an objective.

Objectives are plug-ins: `register_objective` adds an `Objective` instance to `OBJECTIVES` (name -> object), and
`Objective.configured` binds it to a metric back-end (`adaptive_sampler.metrics.backends`) and reference
statistics (`tune --features/--reference/--fid-limit`). The shipped ones (fid, kid, fidelity, fidelity-lpips,
clip-score, label, clip-at-fid; see docs/guides/schedule-search.md) are `MetricObjective` instances: a metric of
the back-end's `MetricAccumulator`, chunk by chunk.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch

from adaptive_sampler.errors import FieldError, did_you_mean
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
from adaptive_sampler.models import file_sha256
from adaptive_sampler.tuning.seeds import SeedSet


@dataclass(frozen=True)
class Score:
    """An objective's value over the samples scored so far (in its direction), with companion metrics."""

    value: float
    metrics: dict[str, float]


class SampleSource(Protocol):
    """What an objective reads from the evaluator that samples for it (`tuning.evaluator.ScheduleEvaluator`)."""

    @property
    def seeds(self) -> SeedSet: ...

    def reference(self, chunk: int) -> torch.Tensor: ...

    def conditions(self, chunk: int) -> tuple[list[str] | None, list[int] | None]: ...


@dataclass(frozen=True)
class Objective(abc.ABC):
    """What a trial optimises, as a plug-in: one instance per name in `OBJECTIVES` (`register_objective`).

    `min_n` is the fewest samples it is defined for (none reported to the pruner before), `default_n` /
    `default_heldout_n` the sample counts when none are given, `rungs` the chunks of the tuning samples (the
    pruner's steps), `uses_reference`: scored against the evaluator's many-step reference. Implement `evaluate`.
    """

    name: str
    direction: Literal["minimize", "maximize"]
    label: str
    min_n: int = 1
    default_n: int = 64
    default_heldout_n: int = 256
    rungs: int = 4
    uses_reference: bool = False

    def configured(self, features: str | None = None, reference: Path | None = None,
                   fid_limit: float | None = None) -> Objective:
        """This objective bound to a metric back-end spec, reference statistics and an FID limit; the default
        takes none of them (FieldError naming the one given).

        Args:
            features: a metric back-end spec (`tune --features`).
            reference: a reference statistics file (`tune --reference`).
            fid_limit: the FID a constrained objective is maximised under (`tune --fid-limit`).
        """
        for name, value in (("features", features), ("reference", reference), ("fid_limit", fid_limit)):
            if value is not None:
                raise FieldError(name, str(value) if isinstance(value, Path) else value,
                                 f"is not used by objective {self.name!r}")
        return self

    def study_identity(self) -> dict[str, object]:
        """What besides the settings' STUDY_KEYS a resumed study must share (e.g. the reference file)."""
        return {}

    def check_shape(self, sample_shape: Sequence[int]) -> None:
        """Raise ValueError (naming `objective`) if samples of `sample_shape` cannot be scored; default: any."""
        return None

    def tuning_seeds(self, n: int, seed: int) -> SeedSet:
        """The tuning set: `n` samples from `seed` on, in up to `rungs` chunks of at least `min_n` (and 2)."""
        if n < self.min_n:
            raise FieldError("n", n, f"tuning samples is below the {self.min_n} that {self.name} needs")
        return SeedSet.split(seed, n, self.rungs, min_first=max(self.min_n, 2))

    def prepare(self, source: SampleSource) -> None:
        """Compute what does not depend on the schedule (references, reference statistics); default: nothing."""
        return None

    @abc.abstractmethod
    def evaluate(self, chunks: Iterable[tuple[int, torch.Tensor]], source: SampleSource) -> Iterator[Score]:
        """Yield the score over the samples so far after each `(chunk index, samples in [-1, 1])` of `chunks`.

        `chunks` is lazy: a chunk is sampled only when asked for, so a pruned trial stops sampling.

        Args:
            chunks: the samples of each chunk of `source.seeds`, in order.
            source: the evaluator that drew them (references and conditions per chunk).
        """


OBJECTIVES: dict[str, Objective] = {}


def register_objective(objective: Objective) -> Objective:
    """Add `objective` to `OBJECTIVES` under its name (replacing one of the same name); returns it."""
    OBJECTIVES[objective.name] = objective
    return objective


def get_objective(name: str) -> Objective:
    """The registered objective called `name` (`tune --objective`)."""
    if name not in OBJECTIVES:
        raise FieldError("objective", name, f"is not one of {', '.join(OBJECTIVES)}{did_you_mean(name, OBJECTIVES)}")
    return OBJECTIVES[name]


@functools.lru_cache(maxsize=4)
def _backend(spec: str) -> MetricBackend:
    """One back-end per spec and process: tuning and held-out scoring share its network (and CLIP, its load)."""
    return make_backend(spec)


@dataclass(frozen=True, kw_only=True)
class MetricObjective(Objective):
    """A metric of a back-end's `MetricAccumulator` over the chunks so far (see the module docstring).

    `metric` is the key of `MetricAccumulator.values`, `default_features` the back-end when `--features` is not
    given (None: it must be given, one of `allowed`, the spec prefixes that can score it). `needs_features`: FID or
    KID, scored in the back-end's feature space against a reference; `uses_fid`: defined only for more samples than
    the feature dimension; `takes_fid_limit`: the CLIP score at a fixed FID (`fid_limit`, required). The back-end
    and the reference of a `configured` copy load on first use, once per process.
    """

    metric: str
    default_features: str | None
    allowed: tuple[str, ...]
    needs_features: bool = False
    uses_fid: bool = False
    takes_fid_limit: bool = False
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
        if self.takes_fid_limit and (fid_limit is None or not fid_limit > 0):
            raise FieldError("fid_limit", fid_limit, f"must be a positive FID for objective {self.name!r} (the FID "
                                                     "that the CLIP score is maximised under)")
        out = dataclasses.replace(self, features=features, reference_path=reference, fid_limit=fid_limit)
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
        if fid_limit is not None and not self.takes_fid_limit:
            raise FieldError("fid_limit", fid_limit, f"is not used by objective {self.name!r}")
        dim = FEATURE_DIM if spec == "embedded" else out.backend.dim  # the embedded net loads only when used
        if self.uses_fid and dim is not None:
            min_n = max(self.min_n, dim + 1)
            out = dataclasses.replace(out, min_n=min_n, default_n=max(self.default_n, self.rungs * min_n))
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
            identity["reference_sha256"] = file_sha256(self.reference_path)
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

    def prepare(self, source: SampleSource) -> None:
        if self.reference_stats is not None:
            _ = self.reference_stats.kid_reference
        if self.backend.needs_reference_images:
            for chunk in range(len(source.seeds.chunks)):
                source.reference(chunk)

    def value(self, metrics: dict[str, float]) -> float:
        """The objective from the accumulated metrics: the metric (NaN while undefined); with an FID limit, the CLIP
        score where FID ≤ `fid_limit`, else `fid_limit` - FID.

        Args:
            metrics: `MetricAccumulator.values` of the chunks so far.
        """
        if not self.takes_fid_limit:
            return metrics.get(self.metric, math.nan)
        if "fid" not in metrics or "clip_score" not in metrics or self.fid_limit is None:
            return math.nan
        excess = metrics["fid"] - self.fid_limit
        return metrics["clip_score"] if excess <= 0 else -excess

    def evaluate(self, chunks: Iterable[tuple[int, torch.Tensor]], source: SampleSource) -> Iterator[Score]:
        backend = self.backend
        accumulator = MetricAccumulator(backend, self.reference_stats)
        for chunk, samples in chunks:
            prompts, labels = source.conditions(chunk)
            accumulator.add(ScoringBatch(samples, prompts=prompts, labels=labels,
                                         reference_images=source.reference(chunk)
                                         if backend.needs_reference_images else None))
            metrics = accumulator.values(precision_recall=False)
            yield Score(self.value(metrics), metrics)


for _objective in (
    # 2,048 samples by default: at 6-10 steps FID on 512 samples moves more between sample sets than good lists
    # differ, and a search keeps the list that fits the noise; min_n: a full-rank covariance of the 128 embedded
    # features; each of the 2 rungs holds more samples than the feature dimension
    MetricObjective("fid", "minimize", "FID (lower is better)", metric="fid", default_features="embedded",
                    allowed=("embedded", "inception:", "clip:"), needs_features=True, uses_fid=True, min_n=129,
                    default_n=2048, default_heldout_n=500, rungs=2),
    MetricObjective("kid", "minimize", "KID (embedded features, lower is better)", metric="kid",
                    default_features="embedded", allowed=("embedded",), needs_features=True, min_n=2, default_n=256,
                    default_heldout_n=500),
    # mean PSNR (and SSIM, for images at least 11 pixels wide) to the evaluator's many-step reference
    MetricObjective("fidelity", "maximize", "PSNR to the many-step reference (dB, higher is better)",
                    uses_reference=True, metric="psnr", default_features="fidelity",
                    allowed=("fidelity", "fidelity:")),
    MetricObjective("fidelity-lpips", "minimize", "LPIPS to the many-step reference (lower is better)",
                    uses_reference=True, metric="lpips", default_features="fidelity:lpips", allowed=("fidelity:",)),
    MetricObjective("clip-score", "maximize", "CLIP score (100 · cos, higher is better)", metric="clip_score",
                    default_features=None, allowed=("clip:",)),
    MetricObjective("label", "maximize", "label agreement (embedded classifier, higher is better)",
                    metric="label_agreement", default_features="label", allowed=("label",)),
    MetricObjective("clip-at-fid", "maximize", "CLIP score at FID ≤ limit (FID excess below 0)",
                    metric="fid-constraint", default_features=None, allowed=("clip:",), needs_features=True,
                    uses_fid=True, takes_fid_limit=True, default_n=64, rungs=2),
):
    register_objective(_objective)
