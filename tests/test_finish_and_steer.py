"""Issue 15: samples a monitor ends finish on a short solver tail to t = 0 (or with x̂0), and monitors that steer a
planner's step size. Tail NFE and timesteps, survivors bitwise unchanged, a tail-finished sample equals the static
solver over its own list, steering golden lists from a plain scan of the λ table, composition with StepSizeControl,
batch-size invariance."""

from __future__ import annotations

import pytest
import torch

from adaptive_sampler import ModelAdapter, StepSizeControl, make_solver, sample
from adaptive_sampler.errors import FieldError
from adaptive_sampler.finish import Finish, parse_finish, tail_timesteps
from adaptive_sampler.monitors import AnyOf, MaxNFE, MonitorDecision, SteeringChange, monitor_from_spec
from adaptive_sampler.policies.step_size_control import SteeredPlan
from adaptive_sampler.step_info import StepInfo
from helpers import TINY_SHAPE

LIST = [999, 950, 900, 800, 600, 400, 200, 100, 50, 10]
EXITS = {2: {0, 2}, 5: {3}}  # step -> global sample indices a scripted monitor marks done there


@pytest.fixture(scope="module")
def adapter(tiny_unet, tiny_config) -> ModelAdapter:
    return ModelAdapter.from_diffusers(tiny_unet, tiny_config)


def _scripted(exits: dict[int, set[int]], seen: list[StepInfo] | None = None):
    def monitor(info: StepInfo) -> torch.Tensor:
        if seen is not None:
            seen.append(info)
        return torch.tensor([i in exits.get(info.step, ()) for i in info.sample_indices.tolist()])
    return monitor


# ---------------------------------------------------------------------------------------------------- the tail
def test_tail_timesteps_are_descending_end_at_zero_and_pad_with_minus_one(adapter):
    schedule = adapter.schedule
    t = torch.tensor([500, 999, 2, 1, 0])
    by_t = tail_timesteps(t, Finish(steps=3, spacing="t"), schedule)
    assert by_t.tolist() == [[333, 166, 0], [666, 333, 0], [1, 0, -1], [0, -1, -1], [-1, -1, -1]]
    by_lam = tail_timesteps(t, Finish(steps=3, spacing="logsnr"), schedule)
    lam = schedule.log_snr().double()
    for row, t0 in zip(by_lam.tolist(), t.tolist(), strict=True):
        valid = [v for v in row if v >= 0]
        assert valid == sorted(set(valid), reverse=True) and all(v < t0 for v in valid)
        assert row[len(valid):] == [-1] * (3 - len(valid)) and (valid[-1] == 0 if t0 > 0 else not valid)
    # log-SNR spacing: the first entry is the smallest t whose λ does not pass a third of the way to λ(0)
    target = lam[500] + (lam[0] - lam[500]) / 3
    assert by_lam[0, 0] == min(s for s in range(1000) if lam[s] <= target)


def test_finish_strings_and_their_errors():
    assert parse_finish("x0") == Finish(mode="x0") and parse_finish("tail") == Finish()
    assert parse_finish("tail:3:t") == Finish(steps=3, spacing="t") and parse_finish("tail:1").steps == 1
    assert Finish(steps=2).spec() == "tail:2:t" and Finish().spec() == "tail:3:t"
    for bad in ("tail:0", "tail:x", "tail:2:sigma", "stop", "x0:1", 3, Finish()):
        with pytest.raises(FieldError) as err:
            parse_finish(bad)  # type: ignore[arg-type]
        assert err.value.field == "finish"


@pytest.mark.parametrize("finish", ["x0", "tail:3:t", 3])
def test_sample_refuses_a_finish_that_is_not_a_finish(adapter, finish):
    with pytest.raises(FieldError) as err:
        sample(adapter, LIST, TINY_SHAPE, 1, finish=finish)
    assert (err.value.field, err.value.value) == ("finish", finish)
    assert 'pass Finish(mode="x0")' in err.value.rule and "parse_finish" in err.value.rule


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("spacing", ["logsnr", "t"])
def test_tail_finish_nfe_timesteps_and_bitwise_unchanged_survivors(adapter, k, spacing):
    seen: list[StepInfo] = []
    baseline = sample(adapter, LIST, TINY_SHAPE, 5, batch_size=5)
    result = sample(adapter, LIST, TINY_SHAPE, 5, batch_size=5, monitor=_scripted(EXITS, seen),
                    finish=Finish(steps=k, spacing=spacing), trace=True)
    exit_step = {i: step for step, rows in EXITS.items() for i in rows}
    for i in range(5):
        if i in exit_step:
            s = exit_step[i]
            tail = tail_timesteps(torch.tensor([LIST[s]]), Finish(steps=k, spacing=spacing), adapter.schedule)[0]
            assert result.timesteps[i] == LIST[: s + 1] + tail.tolist()
            assert result.timesteps[i][-1] == 0 and int(result.nfe[i]) == s + 1 + k
        else:
            assert torch.equal(result.samples[i], baseline.samples[i])
            assert result.timesteps[i] == LIST and int(result.nfe[i]) == len(LIST)
    # the tail's last evaluation is at t = 0 and goes to -1; the monitor saw those rows as finishing
    for info in result.trace:
        for row, i in enumerate(info.sample_indices.tolist()):
            if i in exit_step and info.step == exit_step[i] + k:
                assert int(info.t[row]) == 0 and int(info.t_prev[row]) == -1
    finishing = {(info.step, i) for info in seen for row, i in enumerate(info.sample_indices.tolist())
                 if bool(info.finishing[row])}
    assert finishing == {(exit_step[i] + j, i) for i in exit_step for j in range(1, k + 1)}


@pytest.mark.parametrize("solver", ["ddim", "dpmpp-2m", "unipc"])
def test_a_tail_finished_sample_is_the_static_solver_over_its_own_list(adapter, solver):
    result = sample(adapter, LIST, TINY_SHAPE, 5, batch_size=5, seed=3, solver=make_solver(solver),
                    monitor=_scripted(EXITS), finish=Finish(steps=2))
    for i in (0, 2, 3):
        static = sample(adapter, result.timesteps[i], TINY_SHAPE, 1, batch_size=1, seed=3, start=i,
                        solver=make_solver(solver))
        assert torch.equal(result.samples[i], static.samples[0]), f"sample {i}"


def test_the_default_is_the_tail_and_finish_x0_returns_x0_of_the_exit_step(adapter):
    default = sample(adapter, LIST, TINY_SHAPE, 5, batch_size=5, monitor=_scripted(EXITS))
    tail = sample(adapter, LIST, TINY_SHAPE, 5, batch_size=5, monitor=_scripted(EXITS),
                  finish=Finish(steps=3, spacing="t"))
    assert torch.equal(default.samples, tail.samples) and torch.equal(default.nfe, tail.nfe)
    seen: list[StepInfo] = []
    x0 = sample(adapter, LIST, TINY_SHAPE, 5, batch_size=5, monitor=_scripted(EXITS, seen), finish=Finish(mode="x0"))
    assert x0.nfe.tolist() == [3, 10, 3, 6, 10] and default.nfe.tolist() == [6, 10, 6, 9, 10]
    assert all(info.finishing is None for info in seen)
    row = seen[2].sample_indices.tolist().index(0)
    assert torch.equal(x0.samples[0], seen[2].x0[row])


def test_a_row_done_at_the_last_step_of_its_plan_takes_no_tail(adapter):
    result = sample(adapter, LIST, TINY_SHAPE, 2, monitor=_scripted({len(LIST) - 1: {0, 1}}), finish=Finish(steps=3))
    plain = sample(adapter, LIST, TINY_SHAPE, 2)
    assert torch.equal(result.samples, plain.samples) and result.nfe.tolist() == [len(LIST)] * 2


def test_a_row_with_at_most_k_evaluations_left_walks_its_list_instead_of_a_longer_tail(adapter):
    # done at steps 5..8 of 10: 4, 3, 2 and 1 evaluations left; a 3-step tail only pays for the first
    result = sample(adapter, LIST, TINY_SHAPE, 4, monitor=_scripted({5: {0}, 6: {1}, 7: {2}, 8: {3}}),
                    finish=Finish(steps=3))
    plain = sample(adapter, LIST, TINY_SHAPE, 4)
    assert result.nfe.tolist() == [9, 10, 10, 10]
    assert torch.equal(result.samples[1:], plain.samples[1:]) and result.timesteps[1:] == [LIST] * 3


def test_a_budget_finishes_with_x0_and_cuts_a_tail_at_its_cap(adapter):
    capped = sample(adapter, LIST, TINY_SHAPE, 3, monitor=MaxNFE(4), finish=Finish(steps=3))
    assert capped.nfe.tolist() == [4, 4, 4]
    x0 = sample(adapter, LIST, TINY_SHAPE, 3, monitor=MaxNFE(4), finish=Finish(mode="x0"))
    assert torch.equal(capped.samples, x0.samples)
    # sample 0 is done at step 2 (NFE 3): its 3-step tail is cut after one tail evaluation by max-nfe:4
    both = AnyOf(monitor_from_spec("max-nfe:4"), _AsMonitor(_scripted({2: {0}})))
    cut = sample(adapter, LIST, TINY_SHAPE, 3, monitor=both, finish=Finish(steps=3))
    assert cut.nfe.tolist() == [4, 4, 4] and len(cut.timesteps[0]) == 4 and cut.timesteps[0][3] < LIST[2]


class _AsMonitor(MaxNFE):
    """A scripted done mask wrapped as a Monitor (for composites)."""

    name = "scripted"
    takes_tail = True

    def __init__(self, script):
        super().__init__(1)
        self.script = script

    def __call__(self, info: StepInfo) -> MonitorDecision:
        return MonitorDecision(done=self.script(info), score=torch.zeros(len(info.sample_indices)))


@pytest.mark.parametrize("solver", ["ddim", "dpmpp-2m"])
def test_tail_finish_is_batch_size_invariant(adapter, solver):
    runs = [sample(adapter, LIST, TINY_SHAPE, 5, batch_size=bs, seed=1, solver=make_solver(solver),
                   monitor=_scripted(EXITS), finish=Finish(steps=2, spacing="t")) for bs in (1, 2, 5)]
    for run in runs[1:]:
        assert torch.equal(run.samples, runs[0].samples) and torch.equal(run.nfe, runs[0].nfe)
        assert run.timesteps == runs[0].timesteps


# ---------------------------------------------------------------------------------------------------- steering
def _reach(lam: list[float], target: float, below: int) -> int:
    """The smallest t whose λ does not pass the target, in [0, below - 1] (a plain scan)."""
    return max(0, min(below - 1, min([t for t in range(1000) if lam[t] <= target], default=999)))


def _factors(script: list[float]):
    """A steering monitor: factor script[step] (1 past its end) on every row, never done."""

    def monitor(info: StepInfo) -> MonitorDecision:
        f = script[info.step] if info.step < len(script) else 1.0
        rows = len(info.sample_indices)
        return MonitorDecision(done=torch.zeros(rows, dtype=torch.bool), score=torch.zeros(rows),
                               step_factor=torch.full((rows,), f, dtype=torch.float64))
    return monitor


def test_steered_plan_doubles_and_halves_its_step_as_the_monitor_says(adapter):
    zero = ModelAdapter(lambda x, t, **kw: torch.zeros_like(x), adapter.schedule, prediction_type="sample")
    script = [2.0, 2.0, 0.5, 1.0, 2.0, 0.5, 0.5]
    plan = SteeredPlan(steps=10)
    result = sample(zero, plan, TINY_SHAPE, 2, monitor=_factors(script))
    lam = adapter.schedule.log_snr().tolist()
    h0 = (lam[0] - lam[999]) / 10
    expected, t, step, k = [999], 999, h0, 0
    while t > 0:
        f = script[k] if k < len(script) else 1.0
        step = min(max(step * f, h0 / 16), h0 * 16)
        t = _reach(lam, lam[t] + step, t)
        expected.append(t)
        k += 1
    assert result.timesteps == [expected, expected] and result.nfe.tolist() == [len(expected)] * 2
    # without a monitor it is a walk uniform in λ
    plain = sample(zero, plan, TINY_SHAPE, 1)
    walk, t = [999], 999
    while t > 0:
        t = _reach(lam, lam[t] + h0, t)
        walk.append(t)
    assert plain.timesteps == [walk]


def test_steering_change_grows_after_small_changes_and_shrinks_after_large_ones():
    monitor = SteeringChange("l2", 0.05, 0.5)
    base = torch.ones(3, 1, 8, 8)
    first = monitor(StepInfo(0, torch.full((3,), 900), torch.full((3,), 800), base, base, base, torch.arange(3)))
    assert first.step_factor.tolist() == [1.0, 1.0, 1.0] and not bool(first.done.any())
    x0 = torch.stack([base[0] * 1.01, base[1] * 1.2, base[2] * 3.0])  # changes: small, middle, large
    second = monitor(StepInfo(1, torch.full((3,), 800), torch.full((3,), 700), x0, x0, x0, torch.arange(3)))
    assert second.step_factor.tolist() == [2.0, 1.0, 0.5] and not bool(second.done.any())
    assert ((second.score < 0.05) == torch.tensor([True, False, False])).all()


def test_steering_specs_round_trip_and_bad_ones_name_the_monitor_field():
    spec = "steer-x0-l2:0.005:0.05,min_steps=2"
    monitor = monitor_from_spec(spec)
    assert isinstance(monitor, SteeringChange) and monitor.spec() == spec
    assert (monitor.low, monitor.high, monitor.guardrails.min_steps) == (0.005, 0.05, 2)
    both = monitor_from_spec("x0-l2:0.02|steer-ssim:0.001:0.01")
    assert both.spec() == "x0-l2:0.02|steer-ssim:0.001:0.01"
    for bad in ("steer-x0-l2:0.01", "steer-x0-l2:0.05:0.01", "steer-x0-l2:a:0.1", "steer-nope:0.1:0.2"):
        with pytest.raises(FieldError) as err:
            monitor_from_spec(bad)
        assert err.value.field == "monitor"


def test_a_static_list_cannot_be_steered(adapter):
    with pytest.raises(FieldError, match="has none") as err:
        sample(adapter, LIST, TINY_SHAPE, 1, monitor=_factors([2.0]))
    assert err.value.field == "monitor"


def test_step_size_control_takes_the_monitors_factor_on_its_next_step(adapter):
    zero = ModelAdapter(lambda x, t, **kw: torch.zeros_like(x), adapter.schedule, prediction_type="sample")
    policy = StepSizeControl(tolerance=1e-3, initial_step=0.5, max_factor=3.0)
    result = sample(zero, policy, TINY_SHAPE, 1, monitor=_factors([1.0, 0.5, 0.5]))
    lam = adapter.schedule.log_snr().tolist()
    expected, t, step, k = [999], 999, 0.5, 0  # as test_unchanging_x0_grows_every_step_by_max_factor, steered
    script = [1.0, 0.5, 0.5]
    while t > 0:
        f = script[k] if k < len(script) else 1.0
        nxt = _reach(lam, lam[t] + step * f, t)
        step = (lam[nxt] - lam[t]) * 3.0
        expected.append(t := nxt)
        k += 1
    assert result.timesteps == [expected]


@pytest.mark.parametrize("solver", ["ddim", "dpmpp-2m"])
def test_step_size_control_a_steering_and_an_ending_monitor_compose(adapter, solver):
    """All at once: the controller, a steering monitor, an ending monitor and tail finishes; each sample is the
    static solver over its own accepted list, in any batch size."""
    plan, spec = StepSizeControl(tolerance=0.01), "x0-l2:0.05,min_steps=6|steer-x0-l2:0.02:0.2"
    free = sample(adapter, plan, TINY_SHAPE, 5, seed=2, solver=make_solver(solver))
    runs = [sample(adapter, plan, TINY_SHAPE, 5, batch_size=bs, seed=2, solver=make_solver(solver),
                   monitor=monitor_from_spec(spec), finish=Finish(steps=2)) for bs in (2, 5)]
    assert torch.equal(runs[0].samples, runs[1].samples) and runs[0].timesteps == runs[1].timesteps
    assert torch.equal(runs[0].nfe, runs[1].nfe) and torch.equal(runs[0].rejected, runs[1].rejected)
    assert runs[0].timesteps != free.timesteps, "the steering monitor should change some steps"
    for i, timesteps in enumerate(runs[0].timesteps):
        assert timesteps[-1] == 0
        static = sample(adapter, timesteps, TINY_SHAPE, 1, seed=2, start=i, solver=make_solver(solver))
        assert torch.equal(runs[0].samples[i], static.samples[0]), f"sample {i}"
    assert torch.equal(runs[0].nfe, torch.tensor([len(ts) for ts in runs[0].timesteps]) + runs[0].rejected)


def test_steered_plan_with_a_steering_change_is_batch_size_invariant(adapter):
    runs = [sample(adapter, SteeredPlan(steps=8), TINY_SHAPE, 5, batch_size=bs, seed=4,
                   monitor=monitor_from_spec("steer-x0-l2:0.02:0.2|x0-l2:0.01,min_steps=4")) for bs in (1, 5)]
    assert torch.equal(runs[0].samples, runs[1].samples) and runs[0].timesteps == runs[1].timesteps
    assert len({tuple(ts) for ts in runs[0].timesteps}) > 1, "samples should be steered differently"
