"""Step-allocation policies and the timestep rule: equivalence with diffusers' spacings, validity for every step
count and β schedule (exhaustive grid + hypothesis), golden lists, error messages, NoiseSchedule vs diffusers."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.policies import STATIC_POLICIES, Explicit, Leading, Trailing, make_policy
from adaptive_sampler.timesteps import validate_timesteps

SCHEDULES = {
    "linear": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "squaredcos_cap_v2": {"beta_schedule": "squaredcos_cap_v2"},
}
NOISE = {name: NoiseSchedule.from_config(cfg) for name, cfg in SCHEDULES.items()}
LINEAR = NOISE["linear"]
STEP_COUNTS = [*range(1, 61), 100, 250, 500, 999, 1000]


def diffusers_timesteps(num_steps: int, **config) -> list[int]:
    scheduler = DDIMScheduler(**config)
    scheduler.set_timesteps(num_steps)
    return scheduler.timesteps.tolist()


# ---------------------------------------------------------------- diffusers' spacings


@pytest.mark.parametrize("num_steps", [1, 2, 3, 7, 10, 25, 50, 100, 333, 1000])
@pytest.mark.parametrize(
    ("policy", "config"),
    [("uniform", {"timestep_spacing": "linspace"}), ("leading", {"timestep_spacing": "leading"}),
     ("trailing", {"timestep_spacing": "trailing"})],
)
def test_spacing_policies_equal_diffusers_ddim_timesteps(policy, config, num_steps):
    ours = make_policy(policy).timesteps(num_steps, LINEAR)
    assert ours.dtype == torch.int64
    assert ours.tolist() == diffusers_timesteps(num_steps, **config)


@pytest.mark.parametrize("num_steps", [1, 2, 3, 7, 10, 25, 50, 100, 333])
def test_leading_with_steps_offset_equals_diffusers(num_steps):
    expected = diffusers_timesteps(num_steps, timestep_spacing="leading", steps_offset=1)
    assert Leading(steps_offset=1).timesteps(num_steps, LINEAR).tolist() == expected


def test_leading_with_steps_offset_refuses_a_list_that_leaves_the_training_range():
    """diffusers returns 1000 as the first of 1000 steps with steps_offset=1 (outside [0, 999]); we refuse it."""
    assert diffusers_timesteps(1000, timestep_spacing="leading", steps_offset=1)[0] == 1000
    with pytest.raises(ValueError, match=r"^timesteps\[0\]: 1000 is outside \[0, 999\]"):
        Leading(steps_offset=1).timesteps(1000, LINEAR)


# ---------------------------------------------------------------- every policy, every N, every schedule


def check_plan(policy_name: str, num_steps: int, schedule: NoiseSchedule) -> None:
    planned = make_policy(policy_name).timesteps(num_steps, schedule)
    assert planned.dtype == torch.int64 and planned.ndim == 1
    assert len(planned) == num_steps, f"{policy_name} gave {len(planned)} timesteps for num_steps={num_steps}"
    assert torch.equal(validate_timesteps(planned, schedule.num_train_timesteps), planned)


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("policy_name", list(STATIC_POLICIES))
def test_every_builtin_policy_gives_a_valid_list_of_n_steps(policy_name, schedule_name):
    """No built-in needs to refuse any N in 1…T: each returns exactly N valid timesteps (checked on a grid here,
    and over all N by the hypothesis test below)."""
    for num_steps in STEP_COUNTS:
        check_plan(policy_name, num_steps, NOISE[schedule_name])


@pytest.mark.parametrize("policy_name", list(STATIC_POLICIES))
@pytest.mark.parametrize("num_steps", [0, -3, 1001])
def test_every_builtin_policy_refuses_step_counts_outside_the_training_range(policy_name, num_steps):
    with pytest.raises(ValueError, match=rf"^num_steps: {num_steps} is outside \[1, 1000\]"):
        make_policy(policy_name).timesteps(num_steps, LINEAR)


@pytest.mark.parametrize("policy_name", list(STATIC_POLICIES))
def test_every_builtin_policy_needs_a_step_count(policy_name):
    with pytest.raises(ValueError, match=rf"^num_steps: None is not allowed for policy '{policy_name}'"):
        make_policy(policy_name).timesteps(None, LINEAR)


@settings(max_examples=300, deadline=None)
@given(
    policy_name=st.sampled_from([p for p in STATIC_POLICIES if p != "trailing"]),
    schedule_name=st.sampled_from(list(SCHEDULES)),
    num_steps=st.integers(1, 1000),
)
def test_property_builtin_policies_are_valid_for_any_step_count(policy_name, schedule_name, num_steps):
    check_plan(policy_name, num_steps, NOISE[schedule_name])


@settings(max_examples=300, deadline=None)
@given(num_steps=st.integers(1, 1000))
def test_property_trailing_is_valid_for_any_step_count(num_steps):
    check_plan("trailing", num_steps, LINEAR)


def test_trailing_61_steps():
    planned = Trailing().timesteps(61, LINEAR)
    assert len(planned) == 61 and int(planned[-1]) >= 0


# ---------------------------------------------------------------- golden lists


@pytest.mark.parametrize(
    ("policy_name", "golden"),
    [
        ("quadratic", [800, 632, 483, 355, 246, 158, 88, 39, 9, 0]),
        ("karras", [999, 937, 864, 775, 663, 511, 301, 102, 18, 0]),
        ("logsnr", [999, 886, 757, 603, 410, 202, 73, 22, 5, 0]),
        ("front-loaded", [999, 941, 877, 806, 726, 633, 523, 386, 212, 0]),
        ("uniform", [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
        ("leading", [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
        ("trailing", [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
    ],
)
def test_ten_step_golden_lists_on_the_linear_schedule(policy_name, golden):
    assert make_policy(policy_name).timesteps(10, LINEAR).tolist() == golden


def test_policy_parameters_are_checked():
    from adaptive_sampler.policies import FrontLoaded, Karras

    with pytest.raises(ValueError, match=r"^rho: "):
        Karras(rho=0).timesteps(10, LINEAR)
    with pytest.raises(ValueError, match=r"^strength: -1 is negative; it must be >= 0"):
        FrontLoaded(strength=-1).timesteps(10, LINEAR)
    with pytest.raises(ValueError, match=r"^power: 0 must be positive"):
        FrontLoaded(power=0).timesteps(10, LINEAR)
    # a stronger front-loading puts more of the 10 steps above t = 500
    weak, strong = FrontLoaded(strength=0).timesteps(10, LINEAR), FrontLoaded(strength=10).timesteps(10, LINEAR)
    assert weak.tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert int((strong > 500).sum()) > int((weak > 500).sum())


# ---------------------------------------------------------------- validate_timesteps errors


@pytest.mark.parametrize(
    ("values", "pattern"),
    [
        ([], r"^timesteps: \[\] is empty; at least one timestep is required"),
        ([999, "5"], r"^timesteps\[1\]: '5' is not a finite number"),
        ([999, True], r"^timesteps\[1\]: True is not a finite number"),
        ([999, float("nan")], r"^timesteps\[1\]: nan is not a finite number"),
        ([999, 3.5, 3.5], r"^timesteps\[2\]: 3\.5 repeats timesteps\[1\]"),
        ([999, 998.5, 998.75], r"^timesteps\[2\]: 998\.75 is above timesteps\[1\]=998\.5"),
        ([999.5], r"^timesteps\[0\]: 999\.5 is outside \[0, 999\]"),
        ([999, 500, 500], r"^timesteps\[2\]: 500 repeats timesteps\[1\]; timesteps must be unique"),
        ([10, 20], r"^timesteps\[1\]: 20 is above timesteps\[0\]=10; timesteps must be strictly descending"),
        ([5, -1], r"^timesteps\[1\]: -1 is outside \[0, 999\] \(num_train_timesteps=1000\)"),
        ([1000, 5], r"^timesteps\[0\]: 1000 is outside \[0, 999\]"),
        (torch.tensor([[999, 0]]), r"^timesteps: \(1, 2\) is the shape of a tensor that is not 1-D"),
    ],
)
def test_validate_timesteps_names_index_value_and_rule(values, pattern):
    with pytest.raises(ValueError, match=pattern):
        validate_timesteps(values, 1000)


def test_validate_timesteps_accepts_integral_floats_and_tensors():
    assert validate_timesteps([999.0, 10, 0], 1000).tolist() == [999, 10, 0]
    assert validate_timesteps(torch.tensor([7, 3]), 8).dtype == torch.int64
    with pytest.raises(ValueError, match=r"^custom\[0\]: "):
        validate_timesteps([8], 8, field="custom")


def test_validate_timesteps_keeps_fractional_lists_as_float64_and_integer_lists_as_int64():
    fractional = validate_timesteps([999, 450.5, 0.25], 1000)
    assert fractional.dtype == torch.float64 and fractional.tolist() == [999.0, 450.5, 0.25]
    assert validate_timesteps(torch.tensor([999.0, 450.0]), 1000).dtype == torch.int64
    with pytest.raises(ValueError, match=r"^timesteps\[1\]: 450\.5 is not an integer; this consumer indexes"):
        validate_timesteps([999, 450.5], 1000, integers=True)


def test_validate_timesteps_rejects_infinity_with_a_value_error():
    with pytest.raises(ValueError, match=r"^timesteps\[0\]: inf is not a finite number"):
        validate_timesteps([float("inf")], 1000)


def test_explicit_policy_checks_its_list_and_the_step_count():
    policy = make_policy("explicit", [999, 500, 0])
    assert isinstance(policy, Explicit)
    assert policy.timesteps(None, LINEAR).tolist() == [999, 500, 0]
    assert policy.timesteps(3, LINEAR).tolist() == [999, 500, 0]
    with pytest.raises(ValueError, match=r"^num_steps: 4 differs from the 3 timesteps of the explicit list"):
        policy.timesteps(4, LINEAR)
    with pytest.raises(ValueError, match=r"^timesteps\[1\]: "):
        make_policy("explicit", [0, 999]).timesteps(None, LINEAR)


def test_make_policy_errors_name_the_field():
    with pytest.raises(ValueError, match=r"^policy: 'nope' is not one of uniform, leading, trailing"):
        make_policy("nope")
    with pytest.raises(ValueError,
                       match=r"^timesteps: None is not allowed for policy 'explicit'; it needs a timestep list"):
        make_policy("explicit")
    with pytest.raises(ValueError, match=r"^timesteps: \[999, 0\] is only used with policy 'explicit', not 'karras'"):
        make_policy("karras", [999, 0])


# ---------------------------------------------------------------- NoiseSchedule vs diffusers


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
def test_noise_schedule_equals_diffusers_alphas_cumprod(schedule_name):
    config = SCHEDULES[schedule_name]
    ours = NoiseSchedule.from_config(config).alphas_cumprod
    assert torch.equal(ours, DDIMScheduler(**config).alphas_cumprod)
    assert NoiseSchedule.from_config(config).num_train_timesteps == 1000


def test_noise_schedule_zero_snr_matches_diffusers_except_its_last_entry():
    config = {**SCHEDULES["scaled_linear"], "rescale_betas_zero_snr": True}
    ours = NoiseSchedule.from_config(config).alphas_cumprod
    theirs = DDIMScheduler(**config).alphas_cumprod
    assert torch.equal(ours[:-1], theirs[:-1])
    assert float(theirs[-1]) == 0.0
    assert float(ours[-1]) == 2**-24  # documented: keeps ε-models finite at t = T-1
    assert torch.isfinite(NoiseSchedule(ours).sigmas()).all()


def test_noise_schedule_helpers():
    ts = torch.tensor([999, 0, -1])
    a = LINEAR.alpha_bar(ts)
    assert float(a[2]) == 1.0 and float(a[1]) == float(LINEAR.alphas_cumprod[0])
    sigmas, log_snr = LINEAR.sigmas(), LINEAR.log_snr()
    assert sigmas.dtype == log_snr.dtype == torch.float64
    ac = LINEAR.alphas_cumprod.double()
    torch.testing.assert_close(sigmas, ((1 - ac) / ac).sqrt())
    torch.testing.assert_close(log_snr, -2 * sigmas.log())
    # custom num_train_timesteps and trained betas come through diffusers too
    assert NoiseSchedule.from_config({"num_train_timesteps": 50}).num_train_timesteps == 50
    betas = [0.1] * 4
    torch.testing.assert_close(NoiseSchedule.from_config({"num_train_timesteps": 4, "trained_betas": betas})
                               .alphas_cumprod, torch.tensor([0.9, 0.81, 0.729, 0.6561]))
