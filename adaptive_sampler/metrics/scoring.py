"""A back-end plus reference statistics: the metrics of a set of samples, gathered batch by batch.

Tuning adds one chunk per rung to a `MetricAccumulator`, `eval` all its samples at once; `score_images` is the
one-call form for benchmarks and scripts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.metrics.backends import EmbeddedBackend, MetricBackend, ScoringBatch, make_backend
from adaptive_sampler.metrics.distribution import KidReference, distribution_metrics, fid, kid
from adaptive_sampler.metrics.feature_net import Space
from adaptive_sampler.metrics.statistics import (
    FeatureStatistics,
    embedded_reference_features,
    embedded_reference_statistics,
)


@dataclass(frozen=True)
class Reference:
    """Reference statistics of a feature space; `features` (for KID, precision/recall) where they are known."""

    statistics: FeatureStatistics
    source: str
    features: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        return self.statistics.dim

    @functools.cached_property
    def kid_reference(self) -> KidReference | None:
        """The reference side of KID, computed once per reference (None without features)."""
        return KidReference(self.features) if self.features is not None else None


def embedded_reference(space: Space = "searched") -> Reference:
    """The shipped features and moments of the 10,000 Fashion-MNIST test images in an embedded feature space (read
    once per space)."""
    return _embedded_reference(space)


@functools.lru_cache(maxsize=2)  # one per embedded space
def _embedded_reference(space: Space) -> Reference:
    return Reference(embedded_reference_statistics("test", space),
                     f"{'embedded' if space == 'searched' else space}:fashion-mnist-test",
                     embedded_reference_features(space))


def resolve_reference(backend: MetricBackend, path: Path | str | None) -> Reference | None:
    """The reference of `backend`: the npz at `path` (pytorch-fid layout), else the shipped one for `embedded`, else
    None; a bad file or one of another dimension raises FieldError("reference").

    Args:
        backend: the back-end.
        path: an npz file, or None.
    """
    if path is None:
        return embedded_reference(backend.space) if isinstance(backend, EmbeddedBackend) else None
    if backend.dim is None:
        raise FieldError("reference", str(path), f"is given, but the back-end {backend.spec!r} has no feature space "
                                                 "to compare it in (use embedded, inception:PATH or clip:PATH)")
    stats = FeatureStatistics.load_npz(path, field="reference")
    if stats.dim != backend.dim:
        raise FieldError("reference", str(path), f"holds statistics of {stats.dim}-d features; the back-end "
                                                 f"{backend.spec!r} has {backend.dim}-d features (make the file with "
                                                 f"`adaptive-sampler stats --features {backend.spec}`)")
    return Reference(stats, str(path))


def check_fid_n(backend: MetricBackend, n: int, field: str = "n") -> None:
    """Refuse FID at n ≤ the feature dimension (a rank-deficient covariance) with a FieldError naming `field`.

    Args:
        backend: the back-end.
        n: the sample count.
        field: the name the error gives n.
    """
    if backend.dim is not None and n <= backend.dim:
        raise FieldError(field, n, f"samples is not more than the feature dimension {backend.dim} of "
                                   f"{backend.spec!r}; FID needs n > {backend.dim}")


class MetricAccumulator:
    """Metrics of the samples added so far: per-sample means and, with a reference, FID (n > dim), KID and, where
    the reference holds its features (an npz holds only moments), precision/recall."""

    def __init__(self, backend: MetricBackend, reference: Reference | None = None) -> None:
        self.backend, self.reference = backend, reference
        self._features: list[torch.Tensor] = []
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self.n = 0

    def add(self, batch: ScoringBatch, features: torch.Tensor | None = None) -> None:
        """Score `batch`; `features` may be given when they were computed elsewhere (e.g. gathered across ranks)."""
        if self.backend.feature_extractor is not None and self.reference is not None:
            found = features if features is not None else self.backend.feature_extractor(batch.images)
            self._features.append(found.detach().to("cpu", torch.float64))
        for name, values in self.backend.per_sample(batch).items():
            self._sums[name] = self._sums.get(name, 0.0) + float(values.sum())
            self._counts[name] = self._counts.get(name, 0) + len(values)
        self.n += len(batch.images)

    @property
    def features(self) -> torch.Tensor | None:
        return torch.cat(self._features) if self._features else None

    def values(self, bootstrap: int = 0, seed: int = 0, precision_recall: bool = True) -> dict[str, float]:
        """Metric name -> value over the samples so far (precision/recall unless `precision_recall` is False; with
        `bootstrap`, also `fid_ci_low`…`kid_ci_high`)."""
        out = {name: total / self._counts[name] for name, total in self._sums.items()}
        features = self.features
        if features is None or self.reference is None:
            return out
        ref, (n, d) = self.reference, features.shape
        if ref.features is not None and n > d and (precision_recall or bootstrap):
            m = distribution_metrics(features, ref.features, ref.statistics, bootstrap=bootstrap, seed=seed)
            out.update(fid=m.fid, kid=m.kid, precision=m.precision, recall=m.recall)
            for name, ci in (("fid", m.fid_ci), ("kid", m.kid_ci)):
                if ci is not None:
                    out[f"{name}_ci_low"], out[f"{name}_ci_high"] = ci.low, ci.high
            return out
        if ref.kid_reference is not None and n >= 2:
            out["kid"] = kid(features, ref.kid_reference)
        if n > d:
            out["fid"] = fid(FeatureStatistics.from_features(features), ref.statistics)
        return out


def score_images(images: torch.Tensor, features: str | MetricBackend = "embedded", reference: Path | str | None = None,
                 *, prompts: Sequence[str] | None = None, labels: Sequence[int] | None = None,
                 reference_images: torch.Tensor | None = None, bootstrap: int = 0, seed: int = 0,
                 device: torch.device | str | None = None) -> dict[str, float]:
    """The metrics of images with a back-end; FID is refused at n ≤ the feature dimension (FieldError).

    Args:
        images: [n, C, H, W] in [-1, 1].
        features: a back-end spec, or a built back-end.
        reference: an npz of reference moments (default: the back-end's shipped one).
        prompts: one per image, for CLIP scores.
        labels: one per image, for label agreement.
        reference_images: many-step images of the same noise, for fidelity.
        bootstrap: resamplings for FID/KID intervals (0: none).
        seed: the bootstrap's seed.
        device: where the back-end's network runs.
    """
    backend = make_backend(features, device=device) if isinstance(features, str) else features
    ref = resolve_reference(backend, reference)
    backend.check_shape(tuple(images.shape[1:]))
    if ref is not None:
        check_fid_n(backend, len(images))
    accumulator = MetricAccumulator(backend, ref)
    accumulator.add(ScoringBatch(images, prompts=prompts, labels=labels, reference_images=reference_images))
    return accumulator.values(bootstrap=bootstrap, seed=seed)
