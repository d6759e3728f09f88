"""The core sampler: bitwise reproducibility, golden values, equivalence with a hand-written DDIM loop, NFE and
callbacks (early exit, per-sample compaction), traces, non-finite outputs, option validation."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler
from pydantic import ValidationError
from torch.utils._python_dispatch import TorchDispatchMode

from adaptive_sampler import Finish, ModelAdapter, NonFiniteOutputError, StepInfo, make_policy, sample
from adaptive_sampler.seeding import draw_noise, sample_generator
from helpers import TINY_SHAPE

CUSTOM = [999, 950, 900, 800, 600, 400, 200, 100, 50, 10]
TS = list(range(900, -1, -100))  # 10 steps


@pytest.fixture(scope="module")
def adapter(tiny_unet, tiny_config) -> ModelAdapter:
    return ModelAdapter.from_diffusers(tiny_unet, tiny_config)  # network_rows=8, the default


# ---------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_samples_are_bitwise_identical_across_batch_sizes_and_compositions(adapter, eta):
    runs = {bs: sample(adapter, TS, TINY_SHAPE, 5, batch_size=bs, seed=3, eta=eta).samples for bs in (1, 2, 4, 5)}
    for bs in (2, 4, 5):
        assert torch.equal(runs[1], runs[bs]), f"batch_size={bs} differs from batch_size=1"
    # sample i does not depend on how many samples were requested
    first_three = sample(adapter, TS, TINY_SHAPE, 3, batch_size=3, seed=3, eta=eta).samples
    assert torch.equal(first_three, runs[5][:3])


def test_without_network_rows_batch_sizes_agree_only_approximately(tiny_unet, tiny_config):
    """network_rows=None lets CPU kernels pick algorithms by batch size: equal up to float noise, not promised
    bitwise (on this machine they differ by ~5e-5 after 10 steps; inequality is not asserted)."""
    loose = ModelAdapter.from_diffusers(tiny_unet, tiny_config, network_rows=None)
    runs = {bs: sample(loose, TS, TINY_SHAPE, 5, batch_size=bs).samples for bs in (1, 2, 5)}
    for bs in (2, 5):
        torch.testing.assert_close(runs[bs], runs[1], rtol=0, atol=1e-3)


def test_same_seed_same_samples_different_seed_different_samples(adapter):
    a = sample(adapter, TS, TINY_SHAPE, 3, seed=7).samples
    b = sample(adapter, TS, TINY_SHAPE, 3, seed=7).samples
    c = sample(adapter, TS, TINY_SHAPE, 3, seed=8).samples
    assert torch.equal(a, b)
    for i in range(3):
        assert not torch.equal(a[i], c[i])
    # samples of one run come from unrelated streams too
    assert not torch.equal(a[0], a[1])


# ---------------------------------------------------------------- golden values


@pytest.mark.parametrize(
    ("eta", "golden_sum", "golden_mean_abs"),
    [(0.0, 25.807754, 0.565329), (1.0, -8.983940, 0.647592)],
)
def test_full_loop_golden_values(adapter, eta, golden_sum, golden_mean_abs):
    """10-step uniform DDIM on the tiny seeded UNet (clip_sample=True), like diffusers' full-loop tests."""
    timesteps = make_policy("uniform").timesteps(10, adapter.schedule)
    assert timesteps.tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    result = sample(adapter, timesteps, TINY_SHAPE, 4, batch_size=4, seed=0, eta=eta)
    assert result.samples.shape == (4, *TINY_SHAPE)
    assert result.samples.dtype == torch.float32
    # goldens were computed with one CPU thread; with two, conv reductions sum in another order and the total of
    # these 256 values moves by ~3e-4, so the bound is relative (1e-4 of the value), far below any algorithm change
    assert float(result.samples.sum()) == pytest.approx(golden_sum, rel=1e-4)
    assert float(result.samples.abs().mean()) == pytest.approx(golden_mean_abs, rel=1e-4)


# ---------------------------------------------------------------- equivalence with a hand-written loop


@torch.no_grad()
def reference_ddim(unet, config, timesteps, n, seed, eta):
    """DDIM eq. 12 (Song et al. 2021) over explicit (t, t_prev) pairs with ᾱ_{-1} = 1, written out by hand.

    ᾱ comes from diffusers' own scheduler; x̂0 is clipped when the config says so (as diffusers' DDIM does),
    while ε̂ stays the model's."""
    alphas_cumprod = DDIMScheduler(**{k: v for k, v in config.items() if not k.startswith("_")}).alphas_cumprod
    generators = [sample_generator(seed, i) for i in range(n)]
    x = draw_noise(generators, TINY_SHAPE)
    pairs = list(zip(timesteps, [*timesteps[1:], -1], strict=True))
    for t, t_prev in pairs:
        a_t = alphas_cumprod[t]
        a_prev = alphas_cumprod[t_prev] if t_prev >= 0 else torch.tensor(1.0)
        eps = unet(x, torch.full((n,), t)).sample
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if config["clip_sample"]:
            x0 = x0.clamp(-config["clip_sample_range"], config["clip_sample_range"])
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()  # eq. 16
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps
        if eta > 0:
            x = x + sigma * draw_noise(generators, TINY_SHAPE)
    return x


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sample_matches_hand_written_ddim_over_explicit_pairs(tiny_unet, tiny_config, eta, clip):
    config = {**tiny_config, "clip_sample": clip}
    adapter = ModelAdapter.from_diffusers(tiny_unet, config)
    n = 8  # = network_rows, so both loops call the UNet with the same batch shape
    expected = reference_ddim(tiny_unet, config, CUSTOM, n, seed=11, eta=eta)
    result = sample(adapter, CUSTOM, TINY_SHAPE, n, batch_size=n, seed=11, eta=eta)
    assert result.timesteps == [CUSTOM] * len(result.timesteps)
    torch.testing.assert_close(result.samples, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- NFE and callbacks


def test_nfe_equals_number_of_steps(adapter):
    result = sample(adapter, CUSTOM, TINY_SHAPE, 5, batch_size=2)
    assert result.nfe.tolist() == [len(CUSTOM)] * 5
    assert result.nfe_mean == len(CUSTOM)
    assert result.wall_s > 0


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_callback_true_stops_every_sample_with_x0_of_that_step(adapter, eta):
    k = 3
    seen: dict[int, torch.Tensor] = {}
    steps_seen: list[int] = []

    def stop_at_k(info: StepInfo):
        steps_seen.append(info.step)
        if info.step == k:
            for row, i in enumerate(info.sample_indices.tolist()):
                seen[i] = info.x0[row].clone()
            return True
        return None

    result = sample(adapter, CUSTOM, TINY_SHAPE, 5, batch_size=2, eta=eta, monitor=stop_at_k, finish=Finish(mode="x0"))
    assert result.nfe.tolist() == [k + 1] * 5
    assert steps_seen == [0, 1, 2, 3] * 3  # three batches, none runs past step k
    assert sorted(seen) == [0, 1, 2, 3, 4]
    for i in range(5):
        assert torch.equal(result.samples[i], seen[i])


@pytest.mark.parametrize("batch_size", [5, 3, 2])  # 2: samples 2 and 3 share a batch that empties
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_callback_mask_exits_only_those_samples_and_leaves_the_rest_bitwise_unchanged(adapter, eta, batch_size):
    exits = {2: {0, 2}, 5: {3}}  # step -> global sample indices that are done at that step
    exit_x0: dict[int, torch.Tensor] = {}
    actives: list[tuple[int, list[int]]] = []

    def monitor(info: StepInfo):
        indices = info.sample_indices.tolist()
        actives.append((info.step, indices))
        done = torch.tensor([i in exits.get(info.step, ()) for i in indices])
        for row in done.nonzero().flatten().tolist():
            exit_x0[indices[row]] = info.x0[row].clone()
        return done

    baseline = sample(adapter, CUSTOM, TINY_SHAPE, 5, batch_size=batch_size, eta=eta)
    result = sample(adapter, CUSTOM, TINY_SHAPE, 5, batch_size=batch_size, eta=eta, monitor=monitor,
                    finish=Finish(mode="x0"))

    assert result.nfe.tolist() == [3, 10, 3, 6, 10]
    for i in (0, 2, 3):
        assert torch.equal(result.samples[i], exit_x0[i])
    for i in (1, 4):
        assert torch.equal(result.samples[i], baseline.samples[i])  # compaction changed nothing for them
    # exited samples leave the batch: after step 5 only samples 1 and 4 are seen
    later = {i for step, indices in actives if step > 5 for i in indices}
    assert later == {1, 4}


def test_callback_mask_that_empties_a_batch_of_several_rows(adapter):
    def all_done_at_step_1(info: StepInfo):
        return torch.full((len(info.sample_indices),), info.step == 1)

    result = sample(adapter, CUSTOM, TINY_SHAPE, 3, batch_size=3, monitor=all_done_at_step_1, finish=Finish(mode="x0"))
    assert result.nfe.tolist() == [2, 2, 2]


def test_trace_records_one_step_info_per_step_with_explicit_pairs(adapter):
    result = sample(adapter, CUSTOM, TINY_SHAPE, 2, batch_size=2, trace=True)
    trace = result.trace
    assert trace is not None and len(trace) == len(CUSTOM)
    prevs = [*CUSTOM[1:], -1]
    for k, info in enumerate(trace):
        assert isinstance(info, StepInfo)
        assert info.step == k
        assert info.t.tolist() == [CUSTOM[k]] * 2
        assert info.t_prev.tolist() == [prevs[k]] * 2
        assert info.sample_indices.tolist() == [0, 1]
        assert info.x_t.shape == info.x0.shape == info.eps.shape == (2, *TINY_SHAPE)
    assert trace[-1].t_prev.tolist() == [-1, -1]
    # step 0 starts from the per-sample initial noise; the last step (ᾱ_prev = 1) returns its x̂0
    assert torch.equal(trace[0].x_t, draw_noise([sample_generator(0, i) for i in range(2)], TINY_SHAPE))
    assert torch.equal(trace[-1].x0, result.samples)
    assert sample(adapter, CUSTOM, TINY_SHAPE, 2).trace is None


def test_trace_spans_batches(adapter):
    trace = sample(adapter, [999, 500, 0], TINY_SHAPE, 3, batch_size=2, trace=True).trace
    assert [info.step for info in trace] == [0, 1, 2, 0, 1, 2]
    assert [info.sample_indices.tolist() for info in trace] == [[0, 1]] * 3 + [[2]] * 3


# ---------------------------------------------------------------- non-finite outputs


def test_nan_output_raises_naming_step_and_samples_and_keeps_finished_batches(adapter):
    calls = {"n": 0}
    steps = [999, 500, 0]

    def network(x, t, **kwargs):  # a plain function: ε̂ = 0.1 x, except sample 3 (row 1 of batch 2) from step 1
        calls["n"] += 1
        out = 0.1 * x
        if calls["n"] >= len(steps) + 2:  # batch 1 used calls 1-3; call 5 is step 1 of batch 2
            out = out.clone()
            out[1] = float("nan")
        return out

    model = ModelAdapter(network, adapter.schedule)
    with pytest.raises(NonFiniteOutputError) as caught:
        sample(model, steps, TINY_SHAPE, 4, batch_size=2, seed=0)
    err = caught.value
    assert (err.step, err.t, err.sample_indices) == (1, 500, [3])
    assert "step 1" in str(err) and "t=500" in str(err) and "[3]" in str(err)
    clean = sample(ModelAdapter(lambda x, t, **kw: 0.1 * x, adapter.schedule), steps, TINY_SHAPE, 2, seed=0)
    assert err.partial.samples.shape == (2, *TINY_SHAPE)
    assert torch.equal(err.partial.samples, clean.samples)
    assert err.partial.nfe.tolist() == [3, 3]


def test_nan_in_first_batch_gives_an_empty_partial_of_the_sample_shape(adapter):
    model = ModelAdapter(lambda x, t, **kw: torch.full_like(x, float("nan")), adapter.schedule)
    with pytest.raises(NonFiniteOutputError) as caught:
        sample(model, [999, 0], TINY_SHAPE, 2)
    assert caught.value.sample_indices == [0, 1]
    assert caught.value.partial.samples.shape == (0, *TINY_SHAPE)


# ---------------------------------------------------------------- bad options


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"n": 0}, "n"), ({"eta": 1.5}, "eta"), ({"batch_size": 0}, "batch_size"), ({"eta": -0.1}, "eta"),
     ({"seed": -1}, "seed")],
)
def test_bad_options_raise_validation_error_at_the_field(adapter, kwargs, field):
    args = {"n": 2, **kwargs}
    n = args.pop("n")
    with pytest.raises(ValidationError) as caught:
        sample(adapter, TS, TINY_SHAPE, n, **args)
    errors = caught.value.errors()
    assert len(errors) == 1
    assert errors[0]["loc"] == (field,)


def test_bad_timesteps_raise_value_error_naming_the_index(adapter):
    with pytest.raises(ValueError, match=r"^timesteps\[1\]: 500 is above timesteps\[0\]=10"):
        sample(adapter, [10, 500], TINY_SHAPE, 1)


# ---------------------------------------------------------------- host synchronisation
class _CountHostReads(TorchDispatchMode):
    """Counts the ops that read tensor values back to the host (.item(), bool(), nonzero, boolean-mask indexing):
    on a GPU each of them waits for the device."""

    READS = {"aten.item.default", "aten._local_scalar_dense.default", "aten.nonzero.default",
             "aten.is_nonzero.default"}

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        bool_index = str(func).startswith("aten.index") and any(
            isinstance(a, (list, tuple)) and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in a)
            for a in args)
        self.count += str(func) in self.READS or bool_index
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("network_rows", ["auto", "buckets", "fixed:2", None])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_a_static_list_reads_nothing_back_to_the_host_per_step(adapter, eta, network_rows):
    """The loop's host reads are per batch, not per step: 5 and 20 steps make the same number (the network is a
    plain function here, so only the loop's and the row policy's own ops are counted)."""
    model = ModelAdapter(lambda x, t, **kw: 0.1 * x, adapter.schedule, network_rows=network_rows)
    counts = []
    for steps in (5, 20):
        with _CountHostReads() as reads:
            sample(model, make_policy("uniform").timesteps(steps, adapter.schedule), TINY_SHAPE, 3, eta=eta)
        counts.append(reads.count)
    assert counts[0] == counts[1]
