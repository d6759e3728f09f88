"""Sample-quality metrics: feature extractors, feature statistics, distribution distances, fidelity, and the
evaluation of samples in the embedded feature space."""

from adaptive_sampler.metrics.distribution import (
    ConfidenceInterval,
    DistributionMetrics,
    KidReference,
    PrecisionRecall,
    distribution_metrics,
    fid,
    kid,
    precision_recall,
)
from adaptive_sampler.metrics.evaluation import EvaluationReport, check_embedded_space, score_samples
from adaptive_sampler.metrics.feature_net import EMBEDDED_IMAGE_SHAPE, FEATURE_DIM, FashionFeatureNet
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
    "EMBEDDED_IMAGE_SHAPE",
    "FEATURE_DIM",
    "ConfidenceInterval",
    "DistributionMetrics",
    "EmbeddedFeatureExtractor",
    "EvaluationReport",
    "FashionFeatureNet",
    "FeatureExtractor",
    "FeatureStatistics",
    "Fidelity",
    "InceptionFeatureExtractor",
    "PrecisionRecall",
    "build_fid_inception_v3",
    "check_embedded_space",
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
    "score_samples",
]
