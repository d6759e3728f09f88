"""Calibrating a monitor to a distribution target: FID or KID of the exits at most X % above the full run's."""

from __future__ import annotations

import json
import math

import pytest
import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.finish import Finish
from adaptive_sampler.metrics.distribution import KidReference, fid, kid
from adaptive_sampler.metrics.statistics import FeatureStatistics
from adaptive_sampler.model_adapter import ModelAdapter
from adaptive_sampler.monitors import (
    ChangeMonitor,
    DistributionTarget,
    X0Trace,
    calibrate_threshold,
    monitor_from_spec,
    record_x0_trace,
)
from adaptive_sampler.monitors.calibration import default_entry_of
from adaptive_sampler.sampler import sample
from helpers import build_tiny_unet, tiny_scheduler_config

# a small fixed feature space, so that FID is defined for a few dozen samples: 4 pooled pixel means
DIM = 4


def pooled(images: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.adaptive_avg_pool2d(images.float(), 2).flatten(1)


# 16×16 (the fully convolutional tiny UNet takes it): the held-out report's SSIM needs an 11-pixel window
SHAPE, TIMESTEPS = (1, 16, 16), [999, 899, 799, 699, 599, 499, 399, 299, 199, 99, 0]
REFERENCE = torch.randn(500, DIM, generator=torch.Generator().manual_seed(0)) * 0.3
SAMPLES_PER_SEED = 24


@pytest.fixture(scope="module")
def tiny() -> ModelAdapter:
    return ModelAdapter.from_diffusers(build_tiny_unet(), tiny_scheduler_config(), network_rows=4)


@pytest.fixture(scope="module")
def traces(tiny) -> tuple[X0Trace, X0Trace]:
    return tuple(record_x0_trace(tiny, SHAPE, TIMESTEPS, [seed], SAMPLES_PER_SEED, batch_size=8)
                 for seed in (11, 12))  # type: ignore[return-value]


def target(metric: str, pct: float) -> DistributionTarget:
    return DistributionTarget(metric, pct, feature_extractor=pooled, reference_features=REFERENCE)  # type: ignore[arg-type]


def calibrate(traces: tuple[X0Trace, X0Trace], metric: str, pct: float):
    return calibrate_threshold(ChangeMonitor("l2", 0.0), target(metric, pct), *traces)


@pytest.mark.parametrize("metric", ["fid", "kid"])
def test_distribution_target_is_met_and_equals_the_online_run(tiny, traces, metric):
    result = calibrate(traces, metric, 10.0)
    full_value = result.full_distribution["calibration"]
    assert result.met_target and result.calibration.distribution <= full_value * 1.10
    assert result.target_distribution == {"metric": metric, "max_increase_pct": 10.0}
    # the online run with the chosen threshold (finish x0) exits where the simulation said, so its FID/KID is the same
    online = sample(tiny, TIMESTEPS, SHAPE, 24, batch_size=8, seed=11, monitor=monitor_from_spec(result.monitor),
                    finish=Finish(mode="x0"))
    full = sample(tiny, TIMESTEPS, SHAPE, 24, batch_size=8, seed=11)
    features, reference = pooled(online.samples).double(), REFERENCE.double()
    measured = (fid(FeatureStatistics.from_features(features), FeatureStatistics.from_features(reference))
                if metric == "fid" else kid(features, KidReference(reference)))
    assert online.nfe_mean == pytest.approx(result.calibration.nfe_mean)
    assert measured == pytest.approx(result.calibration.distribution, rel=1e-6)
    full_features = pooled(full.samples).double()
    expected_full = (fid(FeatureStatistics.from_features(full_features), FeatureStatistics.from_features(reference))
                     if metric == "fid" else kid(full_features, KidReference(reference)))
    assert full_value == pytest.approx(expected_full, rel=1e-6)
    assert result.heldout.distribution is not None and math.isfinite(result.heldout.distribution)


def test_a_stricter_distribution_target_never_exits_earlier(traces):
    loose, strict = calibrate(traces, "fid", 50.0), calibrate(traces, "fid", 0.0)
    assert strict.calibration.nfe_mean >= loose.calibration.nfe_mean
    assert loose.calibration.nfe_mean < len(TIMESTEPS)  # the loose target lets samples exit: not vacuous


def test_each_trace_is_featurised_once_for_the_distribution_and_the_feature_distance(traces):
    images_seen: list[int] = []

    def counting(images: torch.Tensor) -> torch.Tensor:
        images_seen.append(len(images))
        return pooled(images)

    for metric in ("fid", "kid"):  # a second target on the same traces extracts no trace features again
        calibrate_threshold(ChangeMonitor("l2", 0.0), DistributionTarget(
            metric, 10.0, feature_extractor=counting, reference_features=REFERENCE), *traces,
            feature_extractor=counting)
    # each trace: every step's x̂0 and the final samples once; each call: the held-out exits' fidelity (two calls)
    assert len(images_seen) == 2 * (len(TIMESTEPS) + 1) + 2 * 2
    assert all(trace.features[id(counting)].distance is not None for trace in traces)


def test_the_defaults_entry_derives_from_the_results_record_an_older_one_included(traces):
    result = calibrate(traces, "kid", 10.0)
    record = json.loads(json.dumps(result.to_json()))  # as bench_early_exit.py's results file holds it
    assert default_entry_of(record) == result.default_entry()
    assert result.default_entry()["heldout_distribution"] == result.heldout.distribution is not None
    del record["target_distribution"], record["heldout"]["distribution"]  # written before distribution targets
    older = default_entry_of(record)
    assert older["target_distribution"] is None and older["heldout_distribution"] is None
    assert older["threshold"] == result.threshold and older["heldout_psnr"] == result.heldout.psnr


@pytest.mark.parametrize("build, field, rule", [
    (lambda: DistributionTarget("psnr", 3.0), "target_distribution.metric", "is not one of fid, kid"),  # type: ignore[arg-type]
    (lambda: DistributionTarget("fid", -1.0), "target_distribution.max_increase_pct", "finite number >= 0"),
    (lambda: DistributionTarget("kid", float("nan")), "target_distribution.max_increase_pct", "finite number"),
    (lambda: DistributionTarget("fid", 3.0, feature_extractor=pooled), "target_distribution.reference_features",
     "must come with its feature_extractor"),
])
def test_bad_distribution_targets_name_the_field(build, field, rule):
    with pytest.raises(FieldError, match=rule) as err:
        build()
    assert err.value.field == field


def test_fid_needs_more_samples_than_feature_dimensions(tiny):
    few = [record_x0_trace(tiny, SHAPE, TIMESTEPS, [seed], DIM, batch_size=8) for seed in (11, 12)]
    with pytest.raises(FieldError, match="too few for FID in a 4-dimensional feature space") as err:
        calibrate_threshold(ChangeMonitor("l2", 0.0), target("fid", 3.0), *few)
    assert err.value.field == "samples_per_seed"
