"""Runtime-adaptive step allocation: the step-size controller and the per-sample loop (per-row timesteps, honest
NFE with rejected steps, equivalence with static DDIM over each sample's accepted list, batch-size invariance)."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from adaptive_sampler import ModelAdapter, NonFiniteOutputError, sample
from adaptive_sampler.policies.step_size_control import (
    StepDecision,
    StepObservation,
    StepSizeControl,
    parse_dynamic_policy,
)
from helpers import TINY_SHAPE


@pytest.fixture(scope="module")
def adapter(tiny_unet, tiny_config) -> ModelAdapter:
    return ModelAdapter.from_diffusers(tiny_unet, tiny_config)


def test_each_sample_equals_static_ddim_over_its_own_accepted_timesteps(adapter):
    result = sample(adapter, StepSizeControl(tolerance=0.01), TINY_SHAPE, 6, batch_size=6, seed=4)
    assert len({tuple(ts) for ts in result.timesteps}) > 1, "samples of one batch should walk different timesteps"
    for i, timesteps in enumerate(result.timesteps):
        assert timesteps[0] == 999 and timesteps[-1] == 0
        static = sample(adapter, timesteps, TINY_SHAPE, i + 1, batch_size=i + 1, seed=4)
        assert torch.equal(result.samples[i], static.samples[i]), f"sample {i}"


def test_nfe_counts_every_evaluation_including_rejected_steps(adapter):
    result = sample(adapter, StepSizeControl(tolerance=0.003), TINY_SHAPE, 5, seed=1)
    accepted = torch.tensor([len(ts) for ts in result.timesteps])
    assert torch.equal(result.nfe, accepted + result.rejected)
    assert int(result.rejected.sum()) > 0, "this tolerance should reject some steps on the random tiny UNet"
    assert result.nfe_mean == pytest.approx(float(result.nfe.double().mean()))


def test_tighter_tolerance_takes_more_steps(adapter):
    nfe = [sample(adapter, StepSizeControl(tolerance=tol), TINY_SHAPE, 4, seed=2).nfe_mean
           for tol in (0.05, 0.01, 0.002)]
    assert nfe[0] < nfe[1] < nfe[2]


def test_bitwise_identical_across_batch_sizes(adapter):
    policy = StepSizeControl(tolerance=0.01)
    runs = [sample(adapter, policy, TINY_SHAPE, 5, batch_size=bs, seed=9) for bs in (1, 2, 5)]
    for run in runs[1:]:
        assert torch.equal(run.samples, runs[0].samples)
        assert run.timesteps == runs[0].timesteps and torch.equal(run.nfe, runs[0].nfe)


def test_unchanging_x0_grows_every_step_by_max_factor(adapter):
    """x̂0 ≡ 0 has zero estimated error, so each step is max_factor times the last one in λ (golden list from a
    plain scan of the λ table)."""
    model = ModelAdapter(lambda x, t, **kw: torch.zeros_like(x), adapter.schedule, prediction_type="sample")
    policy = StepSizeControl(tolerance=1e-3, initial_step=0.5, max_factor=3.0)
    result = sample(model, policy, TINY_SHAPE, 2, seed=0)
    lam = adapter.schedule.log_snr().tolist()

    def reach(target: float, below: int) -> int:  # the smallest t whose λ does not pass the target
        return max(0, min(below - 1, min([t for t in range(1000) if lam[t] <= target], default=999)))

    expected, t, step = [999], 999, 0.5
    while t > 0:
        nxt = reach(lam[t] + step, t)
        step = (lam[nxt] - lam[t]) * 3.0
        expected.append(t := nxt)
    assert result.timesteps == [expected, expected]
    assert result.rejected.tolist() == [0, 0]
    assert torch.equal(result.samples, torch.zeros(2, *TINY_SHAPE))


def test_a_rejected_step_retries_a_smaller_step_from_the_same_point(adapter):
    policy = StepSizeControl(tolerance=0.02, initial_step=1.0)
    schedule = adapter.schedule
    x0_from = torch.zeros(1, *TINY_SHAPE)
    x0 = torch.full((1, *TINY_SHAPE), 4.0)  # a large change: the step from 400 to 300 is rejected
    memory = torch.tensor([1.0], dtype=torch.float64)
    decision = policy.decide(StepObservation(torch.tensor([300]), x0, torch.tensor([400]), x0_from, memory),
                             schedule)
    assert decision.accept.tolist() == [False]
    assert 300 < int(decision.t_next) < 400
    lam = schedule.log_snr()
    h = float(lam[300] - lam[400])
    alpha = float(schedule.alpha_bar(torch.tensor(300)).double().sqrt())
    assert float(decision.error) == pytest.approx(alpha * (h - 1 + math.exp(-h)) / h * 4.0, rel=1e-6)
    assert float(decision.memory) == pytest.approx(h * policy.min_factor)  # the error is far above the tolerance
    assert float(lam[int(decision.t_next)]) <= float(lam[400]) + h * policy.min_factor
    one_step = policy.decide(StepObservation(torch.tensor([300]), x0, torch.tensor([301]), x0_from, memory),
                             schedule)
    assert one_step.accept.tolist() == [True], "a one-timestep step is accepted whatever its error"


def test_a_planner_that_does_not_move_down_is_refused_naming_t_next(adapter):
    class Stuck:
        name = "stuck"

        def start(self, rows, schedule, device):
            return torch.full((rows,), 999), torch.zeros(rows)

        def decide(self, observation: StepObservation, schedule) -> StepDecision:
            rows = observation.t.shape
            return StepDecision(torch.ones(rows, dtype=torch.bool), observation.t.clone(), torch.zeros(rows),
                                torch.zeros(rows))

    with pytest.raises(ValueError, match=r"^t_next: 999 was chosen by planner 'stuck' after accepted timestep 999; "
                                         r"it must lie in \[-1, 998\]"):
        sample(adapter, Stuck(), TINY_SHAPE, 1)


def test_nan_output_raises_naming_the_evaluation_and_keeps_finished_batches(adapter):
    policy = StepSizeControl(tolerance=0.01)
    zero = ModelAdapter(lambda x, t, **kw: torch.zeros_like(x), adapter.schedule, prediction_type="sample")
    clean = sample(zero, policy, TINY_SHAPE, 2, batch_size=2)
    calls_per_batch = int(clean.nfe[0])  # one network call per evaluation: both rows fit in one call
    calls = {"n": 0}

    def network(x, t, **kwargs):  # NaN from the second evaluation of the second batch on
        calls["n"] += 1
        return torch.full_like(x, float("nan")) if calls["n"] > calls_per_batch + 1 else torch.zeros_like(x)

    model = ModelAdapter(network, adapter.schedule, prediction_type="sample")
    with pytest.raises(NonFiniteOutputError) as caught:
        sample(model, policy, TINY_SHAPE, 4, batch_size=2)
    err = caught.value
    assert (err.step, err.t, err.sample_indices) == (1, clean.timesteps[0][1], [2, 3])
    assert torch.equal(err.partial.samples, clean.samples)


@pytest.mark.parametrize(("spec", "words"), [
    ("adaptive", "adaptive:TOLERANCE"), ("adaptive:x", "'x'"), ("adaptive:-1", "positive"),
    ("adaptive:nan", "positive"), ("adaptive:inf", "positive"),
])
def test_bad_dynamic_policy_specs_name_the_policy_field(spec, words):
    with pytest.raises(ValueError, match=r"^policy: ") as caught:
        parse_dynamic_policy(spec)
    assert words in str(caught.value)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"tolerance": 0}, "tolerance"), ({"tolerance": 0.1, "max_factor": 1.0}, "max_factor"),
    ({"tolerance": 0.1, "safety": 1.5}, "safety"), ({"tolerance": 0.1, "bogus": 1}, "bogus"),
])
def test_bad_controller_settings_raise_at_the_field(kwargs, field):
    with pytest.raises(ValidationError) as caught:
        StepSizeControl(**kwargs)
    assert caught.value.errors()[0]["loc"] == (field,)
