"""Metrics: FID/KID/precision-recall vs piq, shipped feature net and references, Inception loading, fidelity."""

from __future__ import annotations

import math

import piq
import pytest
import torch
from safetensors.torch import load_file

from adaptive_sampler.datasets import to_model_range
from adaptive_sampler.metrics import (
    EmbeddedFeatureExtractor,
    FeatureExtractor,
    FeatureStatistics,
    InceptionFeatureExtractor,
    build_fid_inception_v3,
    distribution_metrics,
    embedded_reference_features,
    embedded_reference_statistics,
    fid,
    fidelity,
    kid,
    load_embedded_feature_net,
    precision_recall,
)
from adaptive_sampler.metrics.statistics import EMBEDDED_DIR


def _features(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale + shift


def test_fid_of_a_set_against_its_own_statistics_is_zero():
    stats = FeatureStatistics.from_features(_features(500, 16, seed=0))
    assert abs(fid(stats, stats)) < 1e-3


def test_fid_matches_piq_on_random_features():
    x, y = _features(500, 16, seed=0), _features(500, 16, seed=1, shift=0.3, scale=1.5)
    ours = fid(FeatureStatistics.from_features(x), FeatureStatistics.from_features(y))
    expected = float(piq.FID().compute_metric(x, y))  # Newton-Schulz sqrtm, converged to 1e-5
    assert ours == pytest.approx(expected, rel=1e-3)
    assert ours > 1.0


def test_fid_rejects_statistics_of_different_dimension():
    a = FeatureStatistics.from_features(_features(50, 8, seed=0))
    b = FeatureStatistics.from_features(_features(50, 4, seed=0))
    with pytest.raises(ValueError, match="^stats_b: 4 is its feature dimension, which differs from stats_a's 8"):
        fid(a, b)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    x, y = _features(400, 16, seed=0), _features(600, 16, seed=1)
    same = kid(x, y)
    shifted = kid(x, _features(600, 16, seed=1, shift=0.5))
    assert abs(same) < 0.01
    assert shifted > 0.1


def test_kid_equals_piq_kid_on_equal_sized_sets():
    # piq draws a random subset of the second set of its first's size; with equal sizes that is a permutation,
    # to which the estimate is invariant.
    x, y = _features(300, 16, seed=0), _features(300, 16, seed=1, shift=0.2)
    assert kid(x, y) == pytest.approx(float(piq.KID().compute_metric(x, y)), rel=1e-9, abs=1e-12)


def test_precision_recall_high_for_one_distribution_low_for_disjoint_ones():
    x, y = _features(400, 8, seed=0), _features(800, 8, seed=1)
    same = precision_recall(x, y)
    assert same.precision > 0.6 and same.recall > 0.6
    far = precision_recall(_features(400, 8, seed=0, shift=10.0), y)
    assert far.precision == 0.0 and far.recall == 0.0


def test_distribution_metrics_with_bootstrap_intervals():
    gen, ref = _features(300, 16, seed=0, shift=0.3), _features(600, 16, seed=1)
    m = distribution_metrics(gen, ref, FeatureStatistics.from_features(ref), bootstrap=20, seed=3)
    assert m.n == 300
    assert m.fid == pytest.approx(fid(FeatureStatistics.from_features(gen), FeatureStatistics.from_features(ref)))
    assert m.kid == pytest.approx(kid(gen, ref))
    assert 0.0 <= m.precision <= 1.0 and 0.0 <= m.recall <= 1.0
    assert m.fid_ci is not None and m.kid_ci is not None
    assert m.fid_ci.low <= m.fid_ci.high and m.kid_ci.low <= m.kid_ci.high
    assert m.kid_ci.low < m.kid < m.kid_ci.high
    again = distribution_metrics(gen, ref, FeatureStatistics.from_features(ref), bootstrap=20, seed=3)
    assert again == m


def test_distribution_metrics_refuses_n_not_above_the_feature_dimension():
    ref = _features(300, 128, seed=1)
    with pytest.raises(ValueError, match=r"^n: 50 generated samples is not more than the feature dimension 128"):
        distribution_metrics(_features(50, 128, seed=0), ref, FeatureStatistics.from_features(ref))


def test_feature_statistics_round_trip(tmp_path):
    stats = FeatureStatistics.from_features(_features(40, 6, seed=0))
    stats.save(tmp_path / "stats.safetensors")
    loaded = FeatureStatistics.load(tmp_path / "stats.safetensors")
    assert loaded.n == 40
    torch.testing.assert_close(loaded.mean, stats.mean)
    torch.testing.assert_close(loaded.cov, stats.cov)


def test_shipped_feature_net_classifies_bundled_real_test_images():
    bundled = load_file(EMBEDDED_DIR / "real_test_images.safetensors")
    images = to_model_range(bundled["images"].numpy())
    net = load_embedded_feature_net()
    with torch.inference_mode():
        predicted = net(images).argmax(1)
    assert (predicted == bundled["labels"].long()).sum().item() >= 18


def test_embedded_feature_extractor_batches_and_checks_shape():
    bundled = load_file(EMBEDDED_DIR / "real_test_images.safetensors")
    images = to_model_range(bundled["images"].numpy())
    extractor = EmbeddedFeatureExtractor(batch_size=7)
    assert isinstance(extractor, FeatureExtractor)
    features = extractor(images)
    assert features.shape == (20, extractor.dim) == (20, 128)
    torch.testing.assert_close(features, EmbeddedFeatureExtractor()(images))
    with pytest.raises(ValueError, match=r"^images: \(20, 1, 28, 28\) is its shape; it must be \[n, 1, 32, 32\]"):
        extractor(images[:, :, 2:-2, 2:-2])


def test_embedded_features_see_overshooting_pixels_as_a_saved_image_would():
    images = to_model_range(load_file(EMBEDDED_DIR / "real_test_images.safetensors")["images"].numpy())
    overshoot = images * 1.3  # an unclipped sampler's background lands below -1
    extractor = EmbeddedFeatureExtractor()
    assert torch.equal(extractor(overshoot), extractor(overshoot.clamp(-1, 1)))
    assert not torch.equal(extractor(overshoot), extractor(images * 0.7))


def test_shipped_reference_statistics_and_features_load():
    for split in ("test", "train"):
        stats = embedded_reference_statistics(split)
        assert stats.mean.shape == (128,) and stats.cov.shape == (128, 128) and stats.n == 10_000
    features = embedded_reference_features()
    assert features.shape == (10_000, 128) and features.dtype == torch.float32
    with pytest.raises(ValueError, match="^split: 'val'"):
        embedded_reference_statistics("val")


def test_real_vs_real_fid_floor_is_finite_and_small():
    floor = fid(embedded_reference_statistics("train"), embedded_reference_statistics("test"))
    assert math.isfinite(floor) and 0.0 < floor < 1.0


def test_inception_missing_weights_file_says_where_to_get_it(tmp_path):
    missing = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(FileNotFoundError) as info:
        InceptionFeatureExtractor(missing)
    message = str(info.value)
    assert message.startswith(f"weights_path: {missing}")
    assert "github.com/mseitzer/pytorch-fid/releases" in message and "copy it to" in message


def test_inception_loads_a_state_dict_file_and_gives_2048_features(tmp_path):
    """The weights here are a random initialisation of the FID Inception architecture saved to a tmp file, not the
    real pytorch-fid weights (which cannot be downloaded offline): it checks the file format and the plumbing."""
    torch.manual_seed(0)
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(build_fid_inception_v3().state_dict(), path)
    extractor = InceptionFeatureExtractor(path)
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    features = extractor(images)
    assert features.shape == (2, extractor.dim) == (2, 2048)
    assert torch.isfinite(features).all()


def test_inception_rejects_a_file_of_another_format(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="^weights_path: .* is not a state dict of the FID InceptionV3"):
        InceptionFeatureExtractor(path)


def test_fidelity_of_a_set_with_itself_and_with_noise():
    bundled = load_file(EMBEDDED_DIR / "real_test_images.safetensors")
    images = to_model_range(bundled["images"].numpy())
    same = fidelity(images, images.clone(), EmbeddedFeatureExtractor())
    assert same.psnr > 60 and same.ssim == pytest.approx(1.0, abs=1e-6) and same.feature_distance == 0.0
    assert same.n == 20
    noisy = (images + 0.2 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    worse = fidelity(noisy, images)
    assert worse.psnr < 30 and worse.ssim < 0.9 and worse.feature_distance is None


def test_fidelity_rejects_mismatched_shapes():
    images = torch.zeros(4, 1, 32, 32)
    with pytest.raises(ValueError, match=r"^reference: \(3, 1, 32, 32\) is its shape, which differs from the "
                                         r"images' \(4, 1, 32, 32\)"):
        fidelity(images, images[:3])
