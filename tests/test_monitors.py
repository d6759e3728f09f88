"""Early-exit monitors: each rule on constructed x̂0 sequences, guardrails, composition, spec parsing, LPIPS weights,
the real sampling loop (exit x̂0, NFE, bitwise-unchanged survivors) on a tiny UNet, and calibration."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import UNet2DModel

from adaptive_sampler.finish import Finish
from adaptive_sampler.metrics import fidelity
from adaptive_sampler.model_adapter import ModelAdapter
from adaptive_sampler.monitors import (
    GMSD,
    LPIPS,
    SSIM,
    AllOf,
    AnyOf,
    ChangeMonitor,
    Deadline,
    Distance,
    Features,
    Guardrails,
    HaarPSI,
    LPIPSWeightsMissingError,
    MaxNFE,
    Monitor,
    MonitorDecision,
    RelativeL2,
    Sharpness,
    ThresholdMonitor,
    backbone_weights_path,
    build_lpips,
    calibrated_default,
    laplacian_variance,
    load_calibrated_defaults,
    monitor_from_spec,
)
from adaptive_sampler.monitors import budget as budget_module
from adaptive_sampler.monitors.calibration import PsnrTarget, calibrate_threshold, record_x0_trace
from adaptive_sampler.monitors.spec import calibration_monitor
from adaptive_sampler.sampler import sample
from adaptive_sampler.step_info import StepInfo

SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
                    "clip_sample": True, "prediction_type": "epsilon"}


# ---------------------------------------------------------------------------------------------------------- helpers
def _info(step: int, x0: torch.Tensor, indices: list[int] | None = None, t: int | None = None,
          last: bool = False) -> StepInfo:
    rows = x0.shape[0]
    t_value = 900 - 100 * step if t is None else t
    t_rows = torch.full((rows,), max(t_value, 0), dtype=torch.int64)
    t_prev = torch.full((rows,), -1 if last else max(t_value - 100, 0), dtype=torch.int64)
    idx = torch.arange(rows) if indices is None else torch.tensor(indices)
    return StepInfo(step, t_rows, t_prev, x0, x0, torch.zeros_like(x0), idx)


def _changing_then_constant(rows: int = 2, changing: int = 6, total: int = 10, size: int = 32) -> list[torch.Tensor]:
    """x̂0 that jumps between unrelated images (at growing noise levels) for `changing` steps, then stays put."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(rows, 1, size, size, generator=g) * 1.6 - 0.8
    seq = [(base + 0.15 * (k + 1) * torch.randn(rows, 1, size, size, generator=g)).clamp(-1, 1)
           for k in range(changing)]
    return seq + [seq[-1].clone() for _ in range(total - changing)]


def _run(monitor: Monitor, seq: list[torch.Tensor], **kw) -> list[MonitorDecision]:
    monitor.reset()
    return [monitor(_info(k, x0, last=k == len(seq) - 1, **kw)) for k, x0 in enumerate(seq)]


def _first_done(decisions: list[MonitorDecision], row: int = 0) -> int | None:
    return next((k for k, d in enumerate(decisions) if bool(d.done[row])), None)


def _drive(monitor: Monitor, seq: list[torch.Tensor], indices: list[int] | None = None) -> dict[int, int | None]:
    """Drive `monitor` like the sampling loop over x̂0 of every step ([rows] of all samples): reset, one call a
    step on the active rows, done rows leave (`keep`). Exit step per sample index (None: ran to the end)."""
    indices = list(range(seq[0].shape[0])) if indices is None else indices
    monitor.reset()
    active = torch.arange(len(indices))
    exits: dict[int, int | None] = dict.fromkeys(indices)
    for k, x0 in enumerate(seq):
        last = k == len(seq) - 1
        done = monitor(_info(k, x0[active], [indices[r] for r in active.tolist()], last=last)).done
        for r in active[done].tolist():
            exits[indices[r]] = k
        going = torch.zeros_like(done) if last else ~done
        if not bool(going.all()):
            active = active[going]
            monitor.keep(going)
        if not len(active):
            break
    return exits


def _staggered(rows: int = 4, total: int = 12, size: int = 32) -> list[torch.Tensor]:
    """x̂0 of `rows` samples; sample r changes for 2 + 2r steps, then stays put (so they settle one by one)."""
    g = torch.Generator().manual_seed(2)
    per_row = []
    for r in range(rows):
        changing = [torch.rand(1, 1, size, size, generator=g) * 1.6 - 0.8 for _ in range(2 + 2 * r)]
        per_row.append(changing + [changing[-1].clone() for _ in range(total - len(changing))])
    return [torch.cat([per_row[r][k] for r in range(rows)]) for k in range(total)]


def _tiny_adapter(network_rows: int | None = 4) -> ModelAdapter:
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval().requires_grad_(False)
    return ModelAdapter.from_diffusers(unet, SCHEDULER_CONFIG, network_rows=network_rows)


TIMESTEPS = [999, 899, 799, 699, 599, 499, 399, 299, 199, 99, 0]
SHAPE = (1, 16, 16)


@pytest.fixture(scope="module")
def tiny() -> ModelAdapter:
    return _tiny_adapter()


# ------------------------------------------------------------------------------------------- each monitor's rule
CHANGE_CASES = [
    (lambda g: ChangeMonitor("l2", 1e-4, **g), "x0-l2"),
    (lambda g: ChangeMonitor("ssim", 1e-4, **g), "ssim"),
    (lambda g: ChangeMonitor("haarpsi", 1e-4, **g), "haarpsi"),
    (lambda g: ChangeMonitor("gmsd", 1e-4, **g), "gmsd"),
    (lambda g: ChangeMonitor("features", 1e-4, **g), "features"),
    (lambda g: ChangeMonitor("sharpness", 1e-4, **g), "sharpness"),
    # random backbone: this test says so
    (lambda g: ChangeMonitor("lpips", 1e-4, distance_options={"random_backbone": True}, **g), "lpips"),
]


@pytest.mark.parametrize("make, name", CHANGE_CASES, ids=[c[1] for c in CHANGE_CASES])
def test_change_monitor_fires_on_the_first_unchanged_step_and_not_before_its_warm_up(make, name):
    seq = _changing_then_constant()  # x̂0_6 == x̂0_5: the first zero change is at step 6
    decisions = _run(make({}), seq)
    assert _first_done(decisions) == 6 and _first_done(decisions, row=1) == 6
    assert all(not d.done.any() for d in decisions[:6])
    assert math.isnan(decisions[0].score[0])  # no previous x̂0 at a sample's first step
    assert all(float(d.score[0]) > 1e-4 for d in decisions[1:6])
    assert make({}).name == name
    # warm-up in steps: NFE >= 9 means step 8
    assert _first_done(_run(make({"min_steps": 9}), seq)) == 8
    # warm-up in noise level: t = 900 - 100 k <= 150 first at step 8
    assert _first_done(_run(make({"max_t": 150}), seq)) == 8


@pytest.mark.parametrize("make, name", CHANGE_CASES, ids=[c[1] for c in CHANGE_CASES])
def test_change_monitor_scores_the_same_change_whatever_the_check_interval(make, name):
    """With every = 3 the summary of the previous x̂0 is not kept; it is recomputed and gives the same score."""
    seq = _changing_then_constant()
    every_step, every_third = _run(make({}), seq), _run(make({"every": 3}), seq)
    for k in (2, 5, 8):
        torch.testing.assert_close(every_third[k].score, every_step[k].score, rtol=1e-6, atol=1e-7)
    assert all(torch.isnan(every_third[k].score).all() for k in (0, 1, 3, 4, 6, 7, 9))


class _MaxAbs(Distance):
    """A distance plug-in from outside the package: the largest pixel change."""

    name = "max-abs"

    def __call__(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        return (current - previous).abs().flatten(1).amax(dim=1)


class _FirstPixels:
    """A feature extractor given by the user: the first 4 pixels."""

    dim = 4

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, :4]


def test_change_monitor_takes_any_distance_plug_in_and_a_given_feature_extractor():
    seq = [torch.full((1, 1, 4, 4), 1 + 2.0**-k) for k in range(8)]  # largest change 2^-k at step k
    monitor = ChangeMonitor(_MaxAbs(), 0.05)
    assert monitor.name == "max-abs" and monitor.spec() == "max-abs:0.05"
    decisions = _run(monitor, seq)
    assert _first_done(decisions) == 5 and float(decisions[5].score[0]) == pytest.approx(2**-5)
    extractor = _FirstPixels()
    features = monitor_from_spec("features:0.1", options={"features": {"feature_extractor": extractor}})
    assert isinstance(features.distance, Features) and features.distance.feature_extractor is extractor
    assert float(_run(features, seq)[3].score[0]) == pytest.approx(2 * 2**-3, rel=1e-5)  # ||(2^-3,)*4||
    assert isinstance(ChangeMonitor(LPIPS(random_backbone=True), 0.1).distance, LPIPS)
    with pytest.raises(ValueError, match="^distance: 'blur' is not one of 'l2', 'ssim'"):
        ChangeMonitor("blur", 0.1)
    with pytest.raises(ValueError, match="^distance_options: {'net': 'vgg'} is given with a built distance"):
        ChangeMonitor(RelativeL2(), 0.1, distance_options={"net": "vgg"})


def test_x0_l2_fires_where_the_relative_change_crosses_the_threshold():
    # x̂0_k = 1 + 2^-k: relative change 2^-k / (1 + 2^-(k-1)) is 0.0556 at k = 4 and 0.0294 at k = 5
    seq = [torch.full((1, 1, 4, 4), 1 + 2.0**-k) for k in range(8)]
    decisions = _run(ChangeMonitor("l2", 0.05), seq)
    assert _first_done(decisions) == 5
    assert float(decisions[5].score[0]) == pytest.approx(2**-5 / (1 + 2**-4), rel=1e-6)


def test_sharpness_looks_at_the_plateau_not_the_size():
    g = torch.Generator().manual_seed(1)
    noisy = torch.randn(1, 1, 32, 32, generator=g).clamp(-1, 1)  # very "sharp": residual noise
    smooth = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(1, 1, 32, 32)
    assert float(laplacian_variance(noisy)[0]) > 100 * float(laplacian_variance(smooth + 1e-3 * noisy)[0])
    # constant noisy x̂0: large sharpness, but flat -> fires at step 1
    assert _first_done(_run(ChangeMonitor("sharpness", 0.01), [noisy.clone() for _ in range(4)])) == 1
    # smooth x̂0 whose small sharpness keeps doubling -> never fires
    growing = [smooth + 1e-3 * 2**k * noisy for k in range(6)]
    assert _first_done(_run(ChangeMonitor("sharpness", 0.01), growing)) is None


def test_sharpness_is_the_relative_change_of_the_laplacian_map():
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(2, 1, 16, 16, generator=g)
    # x̂0_k = a_k * noise: the Laplacian scales with a_k, so the score is |a_k - a_{k-1}| / a_{k-1}
    decisions = _run(ChangeMonitor("sharpness", 0.1), [a * noise for a in (1.0, 1.5, 1.6)])
    assert math.isnan(float(decisions[0].score[0]))
    torch.testing.assert_close(decisions[1].score, torch.full((2,), 0.5), rtol=1e-5, atol=0)
    torch.testing.assert_close(decisions[2].score, torch.full((2,), 0.1 / 1.5), rtol=1e-5, atol=0)
    assert _first_done(decisions) == 2
    stencil = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    # the summary is the valid 4-neighbour Laplacian; of the stencil itself: 16 + 4 * 1
    assert torch.equal(Sharpness().summary(stencil), torch.full((1, 1, 1, 1), 20.0))


def test_sharpness_sees_detail_move_where_the_laplacian_variance_is_flat():
    # the variance of the Laplacian, one number, is the same for x̂0 and -x̂0 (and is flat where it turns from
    # falling noise to rising detail); the map it summarises is not: the old rule fired here, this one does not
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(1, 1, 16, 16, generator=g)
    seq = [x0, -x0, x0, -x0]
    assert torch.equal(laplacian_variance(x0), laplacian_variance(-x0))
    decisions = _run(ChangeMonitor("sharpness", 0.5), seq)
    assert _first_done(decisions) is None
    torch.testing.assert_close(decisions[1].score, torch.tensor([2.0]), rtol=1e-6, atol=0)


def test_max_nfe_fires_at_its_budget():
    seq = [torch.zeros(3, 1, 4, 4)] * 6
    decisions = _run(MaxNFE(3), seq)
    assert _first_done(decisions) == 2 and bool(decisions[2].done.all())
    assert decisions[2].score.tolist() == [3.0, 3.0, 3.0]


def test_deadline_fires_once_the_sample_has_used_its_seconds(monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 3.0])  # the clock is read once per step
    monkeypatch.setattr(budget_module.time, "perf_counter", lambda: next(clock))
    decisions = _run(Deadline(1.5), [torch.zeros(2, 1, 4, 4)] * 4)
    assert [round(float(d.score[0]), 3) for d in decisions] == [0.0, 1.0, 2.0, 3.0]
    assert _first_done(decisions) == 2


# ------------------------------------------------------------------------------------------------- guardrails
def test_patience_needs_consecutive_satisfied_checks():
    seq = _changing_then_constant()
    assert _first_done(_run(ChangeMonitor("l2", 1e-4, patience=2), seq)) == 7
    assert _first_done(_run(ChangeMonitor("l2", 1e-4, patience=4), seq)) == 9
    # a change in between resets the streak
    jumpy = seq[:7] + [seq[0]] + [seq[0].clone() for _ in range(3)]
    assert _first_done(_run(ChangeMonitor("l2", 1e-4, patience=2), jumpy)) == 9


def test_check_every_k_scores_only_after_every_kth_evaluation():
    seq = _changing_then_constant()
    decisions = _run(ChangeMonitor("l2", 1e-4, every=3), seq)  # checks at NFE 3, 6, 9 = steps 2, 5, 8
    checked = [k for k, d in enumerate(decisions) if not math.isnan(float(d.score[0]))]
    assert checked == [2, 5, 8]
    assert _first_done(decisions) == 8
    # the change is still per step (x̂0_8 vs x̂0_7), not since the last check: the same score as with every=1
    every_step = _run(ChangeMonitor("l2", 1e-4), seq)
    assert float(decisions[5].score[0]) == float(every_step[5].score[0])


def test_t_window_from_below():
    seq = [torch.zeros(1, 1, 4, 4)] * 10
    # constant from the start: fires at step 1 unless t >= 500 is required (t = 900 - 100 k) — then only at 1..4
    decisions = _run(ChangeMonitor("l2", 1e-4, min_t=500, patience=5), seq)
    assert _first_done(decisions) is None
    assert _first_done(_run(ChangeMonitor("l2", 1e-4, min_t=500, patience=4), seq)) == 4


def test_guardrails_are_validated_and_name_the_field():
    with pytest.raises(ValueError, match="patience"):
        ChangeMonitor("l2", 0.1, patience=0)
    with pytest.raises(ValueError, match="every"):
        ChangeMonitor("l2", 0.1, every=-1)
    with pytest.raises(ValueError, match="min_t 600 is above max_t 500"):
        Guardrails(min_t=600, max_t=500)
    with pytest.raises(ValueError, match="extra_forbidden|warmup"):
        ChangeMonitor("l2", 0.1, warmup=3)
    with pytest.raises(ValueError, match="^threshold: -0.1 is negative"):
        ChangeMonitor("l2", -0.1)
    with pytest.raises(ValueError, match="^threshold: 2.5 is not a positive integer"):
        MaxNFE(2.5)


# ---------------------------------------------------------------------------------------- row-aligned state
def test_state_follows_the_rows_through_compaction():
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.rand(1, 1, 8, 8, generator=g) for _ in range(3))
    monitor = ChangeMonitor("l2", 1e-4)
    monitor.reset()
    # step 0: samples 10, 11, 12; sample 11 leaves; step 1 has rows [10, 12]: 12 is unchanged, 10 changed
    monitor(_info(0, torch.cat([a, b, c]), indices=[10, 11, 12]))
    monitor.keep(torch.tensor([True, False, True]))
    d1 = monitor(_info(1, torch.cat([b, c]), indices=[10, 12]))
    assert d1.done.tolist() == [False, True]
    assert float(d1.score[1]) == 0.0 and float(d1.score[0]) > 0.1
    # sample 11 left the batch: its state is gone
    assert monitor.state.tensors and all(len(v) == 2 for v in monitor.state.tensors.values())
    # a new run (step 0 again) with reused indices starts without history
    d0 = monitor(_info(0, torch.cat([b, c]), indices=[10, 12]))
    assert not d0.done.any() and torch.isnan(d0.score).all()


COMPACTION_CASES = [
    (lambda: ChangeMonitor("l2", 1e-4, patience=2), "x0-l2 patience"),
    (lambda: ChangeMonitor("sharpness", 1e-4, every=2), "sharpness every"),
    (lambda: ChangeMonitor("features", 1e-4, min_steps=3), "features warm-up"),
    (lambda: AnyOf(ChangeMonitor("ssim", 1e-4), MaxNFE(9)), "any-of"),
    (lambda: AllOf(ChangeMonitor("gmsd", 1e-4), ChangeMonitor("l2", 1e-4, patience=3)), "all-of"),
]


@pytest.mark.parametrize("make", [c[0] for c in COMPACTION_CASES], ids=[c[1] for c in COMPACTION_CASES])
def test_rows_leaving_keep_the_others_state_aligned(make):
    """Samples settle one by one and leave; every sample exits where it exits when run alone, in any batch."""
    seq = _staggered()
    together = _drive(make(), seq)
    assert len({e for e in together.values() if e is not None}) >= 3  # they leave at different steps
    alone = {r: _drive(make(), [x0[r : r + 1] for x0 in seq], [r])[r] for r in range(4)}
    assert together == alone
    reversed_rows = _drive(make(), [x0.flip(0) for x0 in seq], [3, 2, 1, 0])
    assert reversed_rows == together


def test_a_monitor_whose_rows_left_without_keep_says_what_to_do():
    monitor = ChangeMonitor("l2", 1e-4)
    monitor(_info(0, torch.zeros(3, 1, 4, 4)))
    with pytest.raises(ValueError, match=r"^monitor: ChangeMonitor holds 3 rows .*has 2; call monitor.keep\(rows\)"):
        monitor(_info(1, torch.zeros(2, 1, 4, 4)))
    monitor.reset()  # a new batch
    assert monitor(_info(0, torch.zeros(2, 1, 4, 4))).done.tolist() == [False, False]


def test_a_monitor_in_batches_of_any_size_exits_at_the_same_steps(tiny):
    trace = record_x0_trace(tiny, SHAPE, TIMESTEPS, [5], 8, batch_size=8)
    scores = ChangeMonitor("l2", 1.0).replay_scores(trace.step_infos(), trace.n, trace.num_steps)
    threshold = float(scores[:, 5].min())  # the change falls steadily: one sample exits at step 5, others later
    runs = []
    for batch_size in (8, 3, 5):
        monitor = monitor_from_spec(f"x0-l2:{threshold!r}|max-nfe:8")
        runs.append((sample(tiny, TIMESTEPS, SHAPE, 8, batch_size=batch_size, seed=5, monitor=monitor,
                            finish=Finish(mode="x0")), monitor))
    (first, first_monitor), *others = runs
    assert len(set(first.nfe.tolist())) >= 3  # exits spread over several steps
    for result, monitor in others:
        assert torch.equal(result.nfe, first.nfe) and torch.equal(result.samples, first.samples)
        assert monitor.stopped_by == first_monitor.stopped_by


# ------------------------------------------------------------------------------------------------ composition
def test_any_of_and_all_of():
    seq = _changing_then_constant()  # x0-l2 fires at step 6
    any_of = AnyOf(ChangeMonitor("l2", 1e-4), MaxNFE(4))
    assert _first_done(_run(any_of, seq)) == 3
    all_of = AllOf(ChangeMonitor("l2", 1e-4), MaxNFE(8))
    decisions = _run(all_of, seq)
    assert _first_done(decisions) == 7
    assert decisions[7].score.shape == (2, 2)
    # AllOf holds a child's verdict while the other catches up: x0-l2 with patience done at 6.., MaxNFE at 9
    assert _first_done(_run(AllOf(ChangeMonitor("l2", 1e-4), MaxNFE(10)), seq)) == 9
    with pytest.raises(ValueError, match="needs at least one monitor"):
        AnyOf()


def test_composites_have_no_threshold_and_say_which_child_stopped_each_sample():
    settles = _changing_then_constant(rows=1, total=10)  # x0-l2 fires at step 6
    g = torch.Generator().manual_seed(5)
    seq = [torch.cat([x0, torch.rand(1, 1, 32, 32, generator=g)]) for x0 in settles]  # row 1 never settles
    x0_l2, budget = ChangeMonitor("l2", 1e-4), MaxNFE(8)
    any_of = AnyOf(x0_l2, budget)
    assert not hasattr(any_of, "threshold") and not hasattr(any_of, "guardrails")
    assert _drive(any_of, seq, [4, 7]) == {4: 6, 7: 7}
    assert any_of.stopped_by == {4: "x0-l2:0.0001", 7: "max-nfe:8"}
    all_of = AllOf(x0_l2, budget)
    assert _drive(all_of, seq, [4, 7]) == {4: 7, 7: None}  # row 7 runs to the end: not stopped early
    assert all_of.stopped_by == {4: "x0-l2:0.0001&max-nfe:8"}
    # a later batch with the same indices replaces their records; samples that run to the end have none
    changing = [torch.rand(2, 1, 32, 32, generator=g) for _ in range(5)]
    assert _drive(all_of, changing, [4, 9]) == {4: None, 9: None}
    assert all_of.stopped_by == {}
    # done at the very last step (sample 4 at step 6 of 7) is not an early stop
    assert _drive(any_of, seq[:7], [4, 7]) == {4: 6, 7: None}
    assert any_of.stopped_by == {}


# ---------------------------------------------------------------------------------------- the real sampling loop
class _Scripted(ThresholdMonitor):
    """Done for given (sample index -> step) pairs: a monitor whose answer is known exactly."""

    name = "scripted"

    def __init__(self, plan: dict[int, int]):
        super().__init__(0.5)
        self.plan = plan
        self.rows_seen: list[int] = []

    def score(self, info: StepInfo) -> torch.Tensor:
        self.rows_seen.append(len(info.sample_indices))
        return torch.tensor([0.0 if self.plan.get(i) == info.step else 1.0 for i in info.sample_indices.tolist()])


def test_exits_return_x0_of_their_step_and_leave_survivors_bitwise_unchanged(tiny):
    n = 10
    full_steps: dict[int, dict[int, torch.Tensor]] = {}

    def record(info: StepInfo) -> None:
        for row, i in enumerate(info.sample_indices.tolist()):
            full_steps.setdefault(i, {})[info.step] = info.x0[row].clone()

    full = sample(tiny, TIMESTEPS, SHAPE, n, batch_size=6, seed=3, monitor=record)
    plan = {0: 2, 3: 2, 4: 5, 7: 0, 8: 9}  # 7 exits after one evaluation; 6-9 are the second batch
    monitor = _Scripted(plan)
    early = sample(tiny, TIMESTEPS, SHAPE, n, batch_size=6, seed=3, monitor=monitor, finish=Finish(mode="x0"))
    rows_seen = monitor.rows_seen
    for i in range(n):
        if i in plan:
            assert torch.equal(early.samples[i], full_steps[i][plan[i]]), i
            assert int(early.nfe[i]) == plan[i] + 1
        else:
            assert torch.equal(early.samples[i], full.samples[i]), i  # bitwise, thanks to fixed network_rows
            assert int(early.nfe[i]) == len(TIMESTEPS)
    assert rows_seen[:4] == [6, 6, 6, 4]  # the batch is compacted after samples 0 and 3 exit at step 2
    assert early.nfe_mean < full.nfe_mean


def test_a_budget_stopping_every_sample_at_once_returns_their_x0_and_counts_k_plus_1(tiny):
    steps: dict[int, torch.Tensor] = {}

    def record(info: StepInfo) -> None:
        if info.step == 2:
            steps.update({i: info.x0[row].clone() for row, i in enumerate(info.sample_indices.tolist())})

    sample(tiny, TIMESTEPS, SHAPE, 5, batch_size=5, seed=0, monitor=record)
    capped = sample(tiny, TIMESTEPS, SHAPE, 5, batch_size=5, seed=0, monitor=MaxNFE(3))
    assert capped.nfe.tolist() == [3] * 5
    assert torch.equal(capped.samples, torch.stack([steps[i] for i in range(5)]))


def test_online_x0_l2_exits_where_the_offline_simulation_says(tiny):
    trace = record_x0_trace(tiny, SHAPE, TIMESTEPS, [5], 8, batch_size=8)
    monitor = ChangeMonitor("l2", 1.0)
    scores = monitor.replay_scores(trace.step_infos(), trace.n, trace.num_steps)
    lowest = scores[:, :-1].nan_to_num(float("inf")).amin(dim=1).sort().values
    threshold = float(lowest[3])  # the 4 samples whose change falls lowest exit, the others do not
    monitor = ChangeMonitor("l2", threshold)
    expected = monitor.simulate_exits(scores)
    assert 0 < int((expected < len(TIMESTEPS) - 1).sum()) < trace.n
    online = sample(tiny, TIMESTEPS, SHAPE, 8, batch_size=8, seed=5, monitor=monitor, finish=Finish(mode="x0"))
    assert online.nfe.tolist() == (expected + 1).tolist()
    assert torch.equal(online.samples, trace.exit_x0(expected))


def test_a_trace_recorded_and_replayed_in_any_batch_size_is_the_same(tiny):
    one = record_x0_trace(tiny, SHAPE, TIMESTEPS, [5], 8, batch_size=8)
    three = record_x0_trace(tiny, SHAPE, TIMESTEPS, [5], 8, batch_size=3)
    assert one.timesteps.tolist() == TIMESTEPS and one.x0.shape == (8, len(TIMESTEPS), *SHAPE)
    assert torch.equal(one.x0, three.x0) and torch.equal(one.samples, three.samples)
    assert torch.equal(one.x0[:, -1], one.samples)  # the last step returns x̂0
    monitor = ChangeMonitor("sharpness", 1.0, every=2)
    by_8 = monitor.replay_scores(one.step_infos(8), one.n, one.num_steps)
    by_3 = monitor.replay_scores(one.step_infos(3), one.n, one.num_steps)
    torch.testing.assert_close(by_3, by_8, rtol=0, atol=0, equal_nan=True)


# ------------------------------------------------------------------------------------------------------- LPIPS
def test_lpips_without_backbone_weights_says_which_file_goes_where(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert backbone_weights_path("alex") == expected
    with pytest.raises(LPIPSWeightsMissingError, match="alexnet-owt-7be5be79.pth") as err:
        ChangeMonitor("lpips", 0.1)
    message = str(err.value)
    assert str(expected) in message and "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in message
    assert "lpips/weights/v0.1/alex.pth" in message  # the linear layers ship with the package
    with pytest.raises(LPIPSWeightsMissingError):
        monitor_from_spec("lpips:0.1")


def test_lpips_loads_a_backbone_file_from_the_hub_cache(monkeypatch, tmp_path):
    from torchvision.models import alexnet

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    features = {k: v for k, v in alexnet(weights=None).state_dict().items() if k.startswith("features.")}
    path = backbone_weights_path("alex")
    path.parent.mkdir(parents=True)
    torch.save(features, path)  # stands in for the real ImageNet file (same keys and shapes)
    model = build_lpips("alex")
    assert torch.equal(getattr(model.net.slice2, "3").weight, features["features.3.weight"])
    random = build_lpips("alex", random_backbone=True)  # tests may, and must say so
    assert not torch.equal(getattr(random.net.slice2, "3").weight, features["features.3.weight"])
    assert torch.equal(random.lins[0].model[1].weight, model.lins[0].model[1].weight)  # shipped linear layers


# -------------------------------------------------------------------------------------------------- spec parsing
def test_monitor_from_spec_builds_each_monitor():
    x0_l2 = monitor_from_spec("x0-l2:0.01")
    assert isinstance(x0_l2, ChangeMonitor) and isinstance(x0_l2.distance, RelativeL2)
    for name, cls in [("ssim", SSIM), ("haarpsi", HaarPSI), ("gmsd", GMSD), ("features", Features),
                      ("sharpness", Sharpness), ("max-nfe", MaxNFE), ("deadline", Deadline)]:
        monitor = monitor_from_spec(f"{name}:2")
        built = monitor.distance if isinstance(monitor, ChangeMonitor) else monitor
        assert isinstance(built, cls) and monitor.threshold == 2.0 and monitor.name == name
    m = monitor_from_spec("sharpness:0.05,patience=2,min_steps=10,every=2")
    assert m.guardrails == Guardrails(patience=2, min_steps=10, every=2)
    assert monitor_from_spec(m.spec()).guardrails == m.guardrails
    both = monitor_from_spec("x0-l2:0.01|max-nfe:30")
    assert isinstance(both, AnyOf) and [type(c) for c in both.monitors] == [ChangeMonitor, MaxNFE]
    assert isinstance(both.monitors[0].distance, RelativeL2)
    assert isinstance(monitor_from_spec("x0-l2:0.01&ssim:0.001"), AllOf)


@pytest.mark.parametrize("spec, message", [
    ("blur:0.1", "^monitor: 'blur' .*is not a known monitor; write NAME"),
    ("x0-l2:abc", "^monitor: 'x0-l2:abc' has threshold 'abc', which is not a finite number"),
    ("x0-l2:nan", "^monitor: 'x0-l2:nan' has threshold 'nan'"),
    ("x0-l2:-1", "^monitor: 'x0-l2:-1' is refused: threshold: -1.0 is negative"),
    ("max-nfe:2.5", "^monitor: 'max-nfe:2.5' is refused: threshold: 2.5 is not a positive integer"),
    ("max-nfe", "^monitor: 'max-nfe' is a budget and needs its number"),
    ("deadline:0", "^monitor: 'deadline:0' is refused: threshold: 0 is not a positive number of seconds"),
    ("x0-l2:0.1,patience=0", "^monitor: 'x0-l2:0.1,patience=0' has bad guardrails"),
    ("x0-l2:0.1,warmup=3", "^monitor: 'x0-l2:0.1,warmup=3' has option 'warmup=3'"),
    ("x0-l2:0.1|ssim:0.1&gmsd:0.1", "^monitor: .* mixes"),
    ("", "^monitor: '' is empty"),
])
def test_monitor_from_spec_rejects_bad_specs_with_the_value_and_the_rule(spec, message):
    with pytest.raises(ValueError, match=message):
        monitor_from_spec(spec)


def test_defaults_come_from_the_calibrated_file_or_say_how_to_get_one():
    with pytest.raises(ValueError, match="^monitor: 'x0-l2' has no threshold, and without a model name"):
        monitor_from_spec("x0-l2")
    with pytest.raises(ValueError, match="^monitor: 'x0-l2' has no threshold and model 'my-model' has no "
                                         "calibrated defaults.*calibrate_threshold"):
        monitor_from_spec("x0-l2", model="my-model", num_steps=50)
    with pytest.raises(ValueError, match="no calibrated default for model 'fashion-mnist' at 7 steps"):
        monitor_from_spec("x0-l2", model="fashion-mnist", num_steps=7)
    shipped = load_calibrated_defaults()["models"]["fashion-mnist"]["steps"]
    steps, entry = next(iter(shipped.items()))
    name, stored = next(iter(entry["monitors"].items()))
    monitor = monitor_from_spec(name, model="fashion-mnist", num_steps=int(steps))
    assert monitor.threshold == stored["threshold"] == calibrated_default(name, "fashion-mnist", int(steps))[
        "threshold"]
    assert monitor.guardrails == Guardrails(**stored["guardrails"])


def test_a_defaults_file_with_another_format_is_refused(tmp_path):
    path = tmp_path / "defaults.json"
    path.write_text(json.dumps({"format": "something-else", "models": {}}))
    with pytest.raises(ValueError, match="has format 'something-else'"):
        load_calibrated_defaults(path)


# -------------------------------------------------------------------------------------------------- calibration
def test_calibration_meets_the_target_on_calibration_seeds_and_matches_the_online_run(tiny):
    cal, held = (record_x0_trace(tiny, SHAPE, TIMESTEPS, [seed], 8, batch_size=8) for seed in (11, 12))
    result = calibrate_threshold(ChangeMonitor("l2", 0.0), PsnrTarget(30.0), cal, held)
    assert result.met_target and result.calibration.psnr >= 30.0
    assert result.calibration.nfe_mean <= len(TIMESTEPS)
    assert result.n_calibration == result.n_heldout == 8 and result.num_steps == len(TIMESTEPS)
    # the offline simulation is what the online run does (same seeds, same threshold)
    full = sample(tiny, TIMESTEPS, SHAPE, 8, batch_size=8, seed=11)
    online = sample(tiny, TIMESTEPS, SHAPE, 8, batch_size=8, seed=11, monitor=monitor_from_spec(result.monitor),
                    finish=Finish(mode="x0"))
    assert online.nfe_mean == pytest.approx(result.calibration.nfe_mean)
    assert fidelity(online.samples, full.samples).psnr == pytest.approx(result.calibration.mean_psnr, abs=1e-4)
    mse = ((online.samples - full.samples) / 2).pow(2).mean()  # the target's PSNR: of the MSE over samples
    assert float(-10 * torch.log10(mse.double() + 1e-8)) == pytest.approx(result.calibration.psnr, abs=1e-3)
    # a stricter target never costs fewer evaluations
    strict = calibrate_threshold(ChangeMonitor("l2", 0.0), PsnrTarget(45.0), cal, held)
    assert strict.calibration.nfe_mean >= result.calibration.nfe_mean


def test_calibration_rejects_bad_requests(tiny):
    one, two = (record_x0_trace(tiny, SHAPE, TIMESTEPS, seeds, 2) for seeds in ([1], [1, 2]))
    monitor = ChangeMonitor("l2", 0.0)
    with pytest.raises(ValueError, match="^target: 30 is not a CalibrationTarget"):
        calibrate_threshold(monitor, 30, one, two)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^heldout: \[1\] are also calibration seeds"):
        calibrate_threshold(monitor, PsnrTarget(30), one, two)
    with pytest.raises(ValueError, match="^monitor: 'deadline' cannot be calibrated"):
        calibrate_threshold(Deadline(1.0), PsnrTarget(30), one, two)
    with pytest.raises(ValueError, match="^target_psnr: nan is not a finite number"):
        PsnrTarget(float("nan"))


def test_calibration_monitor_keeps_guardrails_and_space_and_refuses_what_a_trace_cannot_price():
    monitor, space = calibration_monitor("x0-l2:0.5,patience=2,space=image")  # a given threshold is searched anew
    assert isinstance(monitor, ChangeMonitor) and monitor.threshold == 1 and space == "image"
    assert monitor.guardrails.model_dump(exclude_defaults=True) == {"patience": 2}
    assert calibration_monitor("sharpness").space == "latent"
    with pytest.raises(ValueError, match=r"^monitor: 'x0-l2\|ssim' is a composite"):
        calibration_monitor("x0-l2|ssim")
    with pytest.raises(ValueError, match="^monitor: 'deadline' cannot be calibrated from recorded runs"):
        calibration_monitor("deadline")
