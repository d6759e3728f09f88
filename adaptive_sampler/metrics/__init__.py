"""Sample-quality metrics: feature extractors, feature statistics, distribution distances, and fidelity."""

from adaptive_sampler.metrics.distribution import (
    KidReference,
    ConfidenceInterval,
    DistributionMetrics,
    PrecisionRecall,
    distribution_metrics,
    fid,
    kid,
    precision_recall,
)
from adaptive_sampler.metrics.feature_net import FEATURE_DIM, FashionFeatureNet
from adaptive_sampler.metrics.features import (
    EmbeddedFeatureExtractor,
    FeatureExtractor,
    InceptionFeatureExtractor,
    build_fid_inception_v3,
    load_embedded_feature_net,
)
from adaptive_sampler.metrics.fidelity import Fidelity, fidelity, to_unit_range
from adaptive_sampler.metrics.statistics import (
    FeatureStatistics,
    embedded_reference_features,
    embedded_reference_statistics,
)

__all__ = [
    "FEATURE_DIM",
    "ConfidenceInterval",
    "DistributionMetrics",
    "EmbeddedFeatureExtractor",
    "FashionFeatureNet",
    "FeatureExtractor",
    "FeatureStatistics",
    "Fidelity",
    "InceptionFeatureExtractor",
    "PrecisionRecall",
    "build_fid_inception_v3",
    "distribution_metrics",
    "embedded_reference_features",
    "embedded_reference_statistics",
    "fid",
    "fidelity",
    "to_unit_range",
    "KidReference",
    "kid",
    "load_embedded_feature_net",
    "precision_recall",
]
