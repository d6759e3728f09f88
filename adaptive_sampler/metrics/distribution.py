"""Distances between the generated and the reference feature distributions: FID, KID, precision and recall."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import piq
import scipy.linalg
import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.metrics.statistics import FeatureStatistics


@dataclass(frozen=True)
class ConfidenceInterval:
    """A two-sided percentile-bootstrap interval."""

    low: float
    high: float
    level: float = 0.95


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float


@dataclass(frozen=True)
class DistributionMetrics:
    """FID, KID and precision/recall of n generated samples against a reference, with optional bootstrap CIs."""

    fid: float
    kid: float
    precision: float
    recall: float
    n: int
    fid_ci: ConfidenceInterval | None = None
    kid_ci: ConfidenceInterval | None = None


def fid(stats_a: FeatureStatistics, stats_b: FeatureStatistics, eps: float = 1e-6) -> float:
    """Fréchet distance ||μa - μb||² + Tr(Σa + Σb - 2 (Σa Σb)^½) between two Gaussian feature fits (Heusel et al.
    2017, arXiv:1706.08500), with pytorch-fid's numerics.

    Args:
        stats_a: one set's feature moments.
        stats_b: the other's.
        eps: added to both covariances' diagonals when their product has no finite root.
    """
    if stats_a.dim != stats_b.dim:
        raise FieldError("stats_b", stats_b.dim,
                         f"is its feature dimension, which differs from stats_a's {stats_a.dim}")
    mu_a, mu_b = stats_a.mean.numpy(), stats_b.mean.numpy()
    cov_a, cov_b = stats_a.cov.numpy(), stats_b.cov.numpy()
    with warnings.catch_warnings():
        # singular covariances are routine (a ReLU unit that never fires); the result is checked for finiteness
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(covmean).all():
            offset = np.eye(stats_a.dim) * eps
            covmean = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(covmean):
        imaginary = np.abs(np.diagonal(covmean).imag).max()
        if imaginary > 1e-3:
            raise ValueError(
                f"stats_a, stats_b: sqrtm(cov_a @ cov_b) has an imaginary diagonal part of {imaginary:.3g} "
                "(above 1e-3); the covariances are too ill-conditioned for FID, use more samples"
            )
        covmean = covmean.real
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def _check_features(name: str, features: torch.Tensor, dim: int | None = None, min_n: int = 2) -> None:
    if features.ndim != 2:
        raise FieldError(name, tuple(features.shape), "is its shape; it must be [n, d]")
    if dim is not None and features.shape[1] != dim:
        raise FieldError(name, features.shape[1], f"is its feature dimension, which differs from the generated "
                         f"features' {dim}")
    if features.shape[0] < min_n:
        raise FieldError(name, features.shape[0], f"samples is fewer than the {min_n} needed")


def _cubic_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KID's kernel k(x, y) = (x·y / d + 1)³ between the rows of x and y (as piq's and scikit-learn's)."""
    return (x @ y.T * (1.0 / x.shape[1]) + 1).pow(3)


class KidReference:
    """The reference side of the unbiased KID estimate, mean_{i≠j} k(r_i, r_j), computed once for many sets."""

    def __init__(self, features: torch.Tensor, chunk: int = 1024) -> None:
        self.features = features.double()
        m = self.features.shape[0]
        total = torch.zeros((), dtype=torch.float64, device=self.features.device)
        # in chunks: the 10,000² reference Gram matrix would take 800 MB at once
        for i in range(0, m, chunk):
            k_ref = _cubic_kernel(self.features[i : i + chunk], self.features)
            total += k_ref.sum() - k_ref.diagonal(offset=i).sum()
        self.term = total / (m * (m - 1))
        self.m = m


class _KidTerms:
    """The kernel sums of the unbiased MMD² estimate, kept so the generated set can be reweighted cheaply.

    With counts c (bootstrap draws), MMD² = Σ_{i≠j} c_i c_j k(g_i, g_j) / (N² - Σ c_i²) + mean_{i≠j} k(r_i, r_j)
    - 2 Σ_i c_i Σ_j k(g_i, r_j) / (N m), N = Σ c: pairs of copies of one sample are left out, as they would bias
    KID upward. With all c_i = 1 this is the usual estimate.
    """

    def __init__(self, gen: torch.Tensor, ref: KidReference, chunk: int = 1024) -> None:
        gen, ref_features = gen.double(), ref.features.to(gen.device)
        self.k_gen = _cubic_kernel(gen, gen)
        self.gen_ref_sums = sum(_cubic_kernel(gen, ref_features[i : i + chunk]).sum(1)
                                for i in range(0, ref.m, chunk))
        self.ref_term = ref.term.to(gen.device)
        self.m = ref.m

    def mmd2(self, counts: torch.Tensor) -> float:
        c = counts.to(self.k_gen)
        n = c.sum()
        gen_term = (c @ self.k_gen @ c - (c * c * self.k_gen.diagonal()).sum()) / (n * n - (c * c).sum())
        return float(gen_term + self.ref_term - 2 * (c @ self.gen_ref_sums) / (n * self.m))


def kid(features_a: torch.Tensor, features_b: torch.Tensor | KidReference) -> float:
    """Kernel Inception Distance (Bińkowski et al. 2018, arXiv:1801.01401): unbiased MMD² with the cubic kernel over
    the full sets. Unlike piq's, it draws no random subset of the larger set, so it is deterministic.

    Args:
        features_a: generated features [n, d].
        features_b: reference features [m, d], or a `KidReference` prepared once for many sets.
    """
    _check_features("features_a", features_a)
    given = features_b.features if isinstance(features_b, KidReference) else features_b
    _check_features("features_b", given, dim=features_a.shape[1])
    reference = features_b if isinstance(features_b, KidReference) else KidReference(features_b)
    return _KidTerms(features_a, reference).mmd2(torch.ones(features_a.shape[0]))


def _subset(features: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    if features.shape[0] == size:
        return features
    return features[torch.randperm(features.shape[0], generator=generator)[:size].to(features.device)]


def precision_recall(
    gen_features: torch.Tensor, ref_features: torch.Tensor, nearest_k: int = 3, seed: int = 0
) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al. 2019, arXiv:1904.06991) via piq's PR; k-NN radii shrink
    as a set grows, so the larger set is cut to a seeded random subset of the smaller one's size, as in the paper.

    Args:
        gen_features: generated features [n, d].
        ref_features: reference features [m, d].
        nearest_k: the k of the k-NN radii.
        seed: the subset's seed.
    """
    _check_features("gen_features", gen_features, min_n=nearest_k + 2)
    _check_features("ref_features", ref_features, dim=gen_features.shape[1], min_n=nearest_k + 2)
    size = min(gen_features.shape[0], ref_features.shape[0])
    generator = torch.Generator().manual_seed(seed)
    ref = _subset(ref_features, size, generator).float()
    gen = _subset(gen_features, size, generator).float().to(ref.device)
    precision, recall = piq.PR(nearest_k=nearest_k).compute_metric(ref, gen)
    return PrecisionRecall(precision=float(precision), recall=float(recall))


def _percentile_interval(values: list[float], level: float = 0.95) -> ConfidenceInterval:
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return ConfidenceInterval(low=float(low), high=float(high), level=level)


def distribution_metrics(
    gen_features: torch.Tensor,
    ref_features: torch.Tensor,
    ref_stats: FeatureStatistics,
    bootstrap: int = 0,
    seed: int = 0,
    nearest_k: int = 3,
) -> DistributionMetrics:
    """FID (against `ref_stats`), KID and precision/recall (against `ref_features`) of generated features [n, d].

    The 95 % bootstrap intervals resample the generated features (the reference is fixed). FID is biased upward at
    finite n and a resample holds ~63 % distinct samples, so the FID interval can sit above the point estimate;
    compare intervals of runs with the same n.

    Args:
        gen_features: generated features [n, d].
        ref_features: reference features (KID, precision/recall).
        ref_stats: the reference's moments (FID).
        bootstrap: resamplings for the intervals (0: none).
        seed: drives the resampling and the precision/recall subset.
        nearest_k: see `precision_recall`.
    """
    if gen_features.ndim != 2:
        raise FieldError("gen_features", tuple(gen_features.shape), "is its shape; it must be [n, d]")
    n, d = gen_features.shape
    if n <= d:
        raise FieldError(
            "n", n, f"generated samples is not more than the feature dimension {d}; FID needs n > d for a "
            f"full-rank covariance (use more than {d} samples, ideally thousands)"
        )
    _check_features("ref_features", ref_features, dim=d)
    if ref_stats.dim != d:
        raise FieldError("ref_stats", ref_stats.dim, f"is its feature dimension, which differs from the generated "
                         f"features' {d}")
    if bootstrap < 0:
        raise FieldError("bootstrap", bootstrap, "is negative; pass 0 for no intervals or a number of resamplings")

    kid_terms = _KidTerms(gen_features, KidReference(ref_features))
    pr = precision_recall(gen_features, ref_features, nearest_k=nearest_k, seed=seed)
    fid_ci = kid_ci = None
    if bootstrap:
        generator = torch.Generator().manual_seed(seed)
        fids, kids = [], []
        for _ in range(bootstrap):
            idx = torch.randint(n, (n,), generator=generator)
            fids.append(fid(FeatureStatistics.from_features(gen_features[idx.to(gen_features.device)]), ref_stats))
            kids.append(kid_terms.mmd2(torch.bincount(idx, minlength=n)))
        fid_ci, kid_ci = _percentile_interval(fids), _percentile_interval(kids)
    return DistributionMetrics(
        fid=fid(FeatureStatistics.from_features(gen_features), ref_stats),
        kid=kid_terms.mmd2(torch.ones(n)),
        precision=pr.precision,
        recall=pr.recall,
        n=n,
        fid_ci=fid_ci,
        kid_ci=kid_ci,
    )
