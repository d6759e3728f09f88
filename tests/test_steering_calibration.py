"""Issue 15: a steering monitor calibrated to a mean NFE (`calibrate_steering`): the search, its golden result on
the tiny model, the spec it returns reproducing its NFE online, and errors that name the bad argument."""

from __future__ import annotations

import pytest
import torch

from adaptive_sampler import ModelAdapter, sample
from adaptive_sampler.errors import FieldError
from adaptive_sampler.monitors import monitor_from_spec
from adaptive_sampler.monitors.steering_calibration import calibrate_steering
from adaptive_sampler.policies.step_size_control import SteeredPlan
from helpers import TINY_SHAPE

PLAN = SteeredPlan(steps=8)
SEEDS = {"calibration_seeds": [1], "heldout_seeds": [2], "samples_per_seed": 8}


@pytest.fixture(scope="module")
def adapter(tiny_unet, tiny_config) -> ModelAdapter:
    return ModelAdapter.from_diffusers(tiny_unet, tiny_config)


def test_steering_calibrated_to_a_mean_nfe_reproduces_it_online(adapter):
    result = calibrate_steering(adapter, TINY_SHAPE, PLAN, 8, **SEEDS)
    # golden (tiny model): at the quartiles nearly every step halves (about 92 NFE: the exact count is chaotic and
    # moves with the thread count's float round-off); scale 4 and 16 give 9, 64 gives 8
    assert [r["scale"] for r in result.runs] == [1.0, 4.0, 16.0, 64.0] and result.runs[0]["nfe_mean"] > 80
    assert [r["nfe_mean"] for r in result.runs[1:]] == [9.0, 9.0, 8.0]
    assert result.calibration_nfe_mean == 8.0 and result.target_nfe == 8.0
    assert result.high / result.low == pytest.approx(result.runs[0]["high"] / result.runs[0]["low"])
    online = sample(adapter, PLAN, TINY_SHAPE, 8, seed=1, monitor=monitor_from_spec(result.monitor))
    assert float(online.nfe.double().mean()) == result.calibration_nfe_mean
    heldout = sample(adapter, PLAN, TINY_SHAPE, 8, seed=2, monitor=monitor_from_spec(result.monitor))
    assert float(heldout.nfe.double().mean()) == result.heldout_nfe_mean


def test_an_unreachable_target_returns_the_closest_candidate_within_max_runs(adapter):
    result = calibrate_steering(adapter, TINY_SHAPE, PLAN, 2, max_runs=6, **SEEDS)
    assert len(result.runs) == 6 and [r["scale"] for r in result.runs] == [4.0 ** k for k in range(6)]
    assert result.calibration_nfe_mean == min(r["nfe_mean"] for r in result.runs) > 2


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"target_nfe": 0}, "target_nfe"),
    ({"target_nfe": float("nan")}, "target_nfe"),
    ({"monitor": "max-nfe"}, "monitor"),
    ({"quantiles": (0.75, 0.25)}, "quantiles"),
    ({"max_runs": 1}, "max_runs"),
    ({"heldout_seeds": [1]}, "heldout_seeds"),
    ({"samples_per_seed": 0}, "samples_per_seed"),
])
def test_bad_arguments_name_their_field(adapter, kwargs, field):
    arguments = {"target_nfe": 8, **SEEDS, **kwargs}
    with pytest.raises(FieldError) as err:
        calibrate_steering(adapter, TINY_SHAPE, PLAN, **arguments)
    assert err.value.field == field


def test_a_static_list_cannot_be_calibrated_for_steering(adapter):
    from adaptive_sampler.planner import StaticPlan

    with pytest.raises(FieldError, match="steers step sizes"):
        calibrate_steering(adapter, TINY_SHAPE, StaticPlan(torch.tensor([999, 500, 0]), 1000), 3, **SEEDS)
