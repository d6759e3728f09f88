"""Sample-quality metrics: metric back-ends (feature spaces and per-sample scorers, `backends`), reference
statistics (pytorch-fid's npz layout, `statistics`), distribution distances, fidelity, CLIP, and their
accumulation over a set of samples (`scoring`)."""

from adaptive_sampler.metrics.backends import (
    BACKEND_SPECS,
    ClipBackend,
    EmbeddedBackend,
    FidelityBackend,
    InceptionBackend,
    LabelBackend,
    MetricBackend,
    ScoringBatch,
    make_backend,
)
from adaptive_sampler.metrics.clip import ClipFeatureExtractor, LocalClip
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
from adaptive_sampler.metrics.fidelity import Fidelity, fidelity, fidelity_per_sample, to_unit_range
from adaptive_sampler.metrics.resize import clean_preprocess, clean_resize, quantize_uint8
from adaptive_sampler.metrics.scoring import (
    MetricAccumulator,
    Reference,
    check_fid_n,
    embedded_reference,
    resolve_reference,
    score_images,
)
from adaptive_sampler.metrics.statistics import (
    FeatureStatistics,
    embedded_reference_features,
    embedded_reference_statistics,
)

__all__ = [
    "BACKEND_SPECS",
    "ClipBackend",
    "ClipFeatureExtractor",
    "EmbeddedBackend",
    "FidelityBackend",
    "InceptionBackend",
    "LabelBackend",
    "LocalClip",
    "MetricAccumulator",
    "MetricBackend",
    "Reference",
    "ScoringBatch",
    "check_fid_n",
    "clean_preprocess",
    "clean_resize",
    "embedded_reference",
    "fidelity_per_sample",
    "make_backend",
    "quantize_uint8",
    "resolve_reference",
    "score_images",
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
