"""Score samples in the embedded Fashion-MNIST feature space: FID, KID, precision/recall."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.metrics.distribution import DistributionMetrics, distribution_metrics
from adaptive_sampler.metrics.feature_net import EMBEDDED_IMAGE_SHAPE, FEATURE_DIM, Space
from adaptive_sampler.metrics.features import EmbeddedFeatureExtractor
from adaptive_sampler.metrics.statistics import embedded_reference_features, embedded_reference_statistics


@dataclass
class EvaluationReport:
    """Quality of n samples against the 10,000 Fashion-MNIST test images, with how they were made."""

    metrics: DistributionMetrics
    nfe_mean: float
    n: int
    seed: int
    wall_s: float

    def to_json(self, **extra: Any) -> dict[str, Any]:
        fields = {k: v for k, v in asdict(self.metrics).items() if v is not None}
        return {**fields, "nfe_mean": self.nfe_mean, "n": self.n, "seed": self.seed, "wall_s": self.wall_s, **extra}


def check_embedded_space(sample_shape: tuple[int, ...], n: int) -> None:
    """Refuse models whose samples the embedded feature space cannot score, and n too small for FID.

    Args:
        sample_shape: (C, H, W) of the samples.
        n: how many samples will be scored.
    """
    if tuple(sample_shape) != EMBEDDED_IMAGE_SHAPE:
        raise FieldError(
            "model", tuple(sample_shape), "is its sample shape, which the embedded Fashion-MNIST feature space cannot "
            f"score: it takes {EMBEDDED_IMAGE_SHAPE}; score other images with --features inception:PATH or clip:PATH "
            "and --reference ref.npz (from `adaptive-sampler stats`), or --features fidelity"
        )
    if n <= FEATURE_DIM:
        raise FieldError("n", n, f"samples is not more than the feature dimension {FEATURE_DIM}; "
                         f"FID needs n > {FEATURE_DIM}")


def score_samples(samples: torch.Tensor, bootstrap: int = 0, seed: int = 0,
                  space: Space = "searched") -> DistributionMetrics:
    """FID/KID/precision/recall of samples [n, 1, 32, 32] in [-1, 1] against the Fashion-MNIST test set.

    Args:
        samples: [n, 1, 32, 32] in [-1, 1].
        bootstrap: resamplings for FID/KID intervals (0: none).
        seed: the bootstrap's seed.
        space: the embedded feature space, searched (the default, the one tuning scores in) or heldout.
    """
    features = EmbeddedFeatureExtractor(space=space)(samples)
    return distribution_metrics(features, embedded_reference_features(space),
                                embedded_reference_statistics("test", space), bootstrap=bootstrap, seed=seed)
