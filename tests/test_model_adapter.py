"""ModelAdapter: ε/v/x0 conversions, classifier-free guidance, conditioning rows, x̂0 clipping and dynamic
thresholding (vs diffusers), fixed-size network chunks."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from adaptive_sampler.model_adapter import Conditioning, ModelAdapter, X0Processing
from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.sampler import sample
from helpers import RowCounter

SCHEDULE = NoiseSchedule.from_config({"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02})
T = torch.tensor([999, 500, 10, 0])  # one timestep per row
SHAPE = (4, 2, 3, 3)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


X = _randn(*SHAPE, seed=0)
OUT = _randn(*SHAPE, seed=1)


def _alpha(t: torch.Tensor = T) -> torch.Tensor:
    return SCHEDULE.alphas_cumprod[t].view(-1, 1, 1, 1)


def constant_network(x, t, **kwargs):
    """A known network output, whatever the input."""
    return OUT.clone()


# ---------------------------------------------------------------- parameterisations


def test_epsilon_prediction():
    pred = ModelAdapter(constant_network, SCHEDULE, prediction_type="epsilon")(X, T)
    a = _alpha()
    torch.testing.assert_close(pred.eps, OUT)
    torch.testing.assert_close(pred.x0, (X - (1 - a).sqrt() * OUT) / a.sqrt())


def test_v_prediction():
    pred = ModelAdapter(constant_network, SCHEDULE, prediction_type="v_prediction")(X, T)
    a = _alpha()
    torch.testing.assert_close(pred.x0, a.sqrt() * X - (1 - a).sqrt() * OUT)
    torch.testing.assert_close(pred.eps, a.sqrt() * OUT + (1 - a).sqrt() * X)


def test_sample_prediction():
    pred = ModelAdapter(constant_network, SCHEDULE, prediction_type="sample")(X, T)
    a = _alpha()
    torch.testing.assert_close(pred.x0, OUT)
    torch.testing.assert_close(pred.eps, (X - a.sqrt() * OUT) / (1 - a).sqrt())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_every_parameterisation_is_consistent_with_the_forward_process(prediction_type):
    """x_t = sqrt(ᾱ) x̂0 + sqrt(1 - ᾱ) ε̂ holds for every parameterisation (no clipping)."""
    pred = ModelAdapter(constant_network, SCHEDULE, prediction_type=prediction_type)(X, T)
    a = _alpha()
    torch.testing.assert_close(a.sqrt() * pred.x0 + (1 - a).sqrt() * pred.eps, X, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_x0_matches_diffusers_ddim_pred_original_sample(prediction_type):
    scheduler = DDIMScheduler(prediction_type=prediction_type, clip_sample=False)
    scheduler.set_timesteps(10)
    t = int(scheduler.timesteps[3])
    x, out = X[:1], OUT[:1]
    expected = scheduler.step(out, t, x).pred_original_sample
    pred = ModelAdapter.from_diffusers(lambda x_, t_: out.clone(), dict(scheduler.config), network_rows=None)(
        x, torch.tensor([t]))
    torch.testing.assert_close(pred.x0, expected)


def test_adapter_rejects_bad_settings():
    with pytest.raises(ValueError, match=r"^prediction_type: 'noise' is not one of"):
        ModelAdapter(constant_network, SCHEDULE, prediction_type="noise")
    with pytest.raises(ValueError, match=r"^network_rows: 0 must be a positive integer \(fixed:N\) or None"):
        ModelAdapter(constant_network, SCHEDULE, network_rows=0)


def test_output_objects_and_tuples_are_unwrapped_and_dtype_promoted():
    class Out:
        def __init__(self, sample):
            self.sample = sample

    for network in (lambda x, t: Out(OUT.clone()), lambda x, t: (OUT.clone(),), lambda x, t: OUT.half()):
        pred = ModelAdapter(network, SCHEDULE)(X, T)
        assert pred.eps.dtype == torch.float32
        torch.testing.assert_close(pred.eps, OUT, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- conditioning and guidance


def conditional_network(x, t, *, encoder_hidden_states):
    """Row-wise output that depends on the conditioning: x · (1 + mean of that row's embedding)."""
    return x * (1 + encoder_hidden_states.mean(dim=(1, 2))).view(-1, 1, 1, 1)


@pytest.mark.parametrize("network_rows", [None, 3, 8])
@pytest.mark.parametrize("scale", [0.0, 3.5, 7.5])
def test_classifier_free_guidance(scale, network_rows):
    cond = _randn(4, 5, 6, seed=2)
    uncond = _randn(4, 5, 6, seed=3)
    conditioning = Conditioning({"encoder_hidden_states": cond}, {"encoder_hidden_states": uncond}, scale)
    pred = ModelAdapter(conditional_network, SCHEDULE, network_rows=network_rows)(X, T, conditioning)
    out_c = conditional_network(X, T, encoder_hidden_states=cond)
    out_u = conditional_network(X, T, encoder_hidden_states=uncond)
    torch.testing.assert_close(pred.eps, out_u + scale * (out_c - out_u))


def test_guidance_scale_one_runs_only_the_conditional_rows():
    network = RowCounter(conditional_network)
    cond, uncond = _randn(4, 5, 6, seed=2), _randn(4, 5, 6, seed=3)
    conditioning = Conditioning({"encoder_hidden_states": cond}, {"encoder_hidden_states": uncond}, 1.0)
    pred = ModelAdapter(network, SCHEDULE, network_rows=None)(X, T, conditioning)
    assert network.rows == [4]
    torch.testing.assert_close(pred.eps, conditional_network(X, T, encoder_hidden_states=cond))


def test_conditioning_select_broadcasts_single_row_tensors():
    per_sample = torch.arange(5.0).view(5, 1, 1)
    shared = torch.full((1, 2, 3), 7.0)
    conditioning = Conditioning({"a": per_sample, "b": shared}, {"a": -per_sample, "b": -shared}, 2.0)
    picked = conditioning.select(torch.tensor([3, 0, 4]))
    assert picked.cond["a"].flatten().tolist() == [3.0, 0.0, 4.0]
    assert picked.uncond["a"].flatten().tolist() == [-3.0, -0.0, -4.0]
    assert picked.cond["b"].shape == picked.uncond["b"].shape == (3, 2, 3)
    assert (picked.cond["b"] == 7).all() and (picked.uncond["b"] == -7).all()
    assert picked.guidance_scale == 2.0
    assert Conditioning({"a": per_sample}).select(torch.tensor([1])).uncond is None


def test_sampler_passes_each_sample_its_own_conditioning_rows():
    """Through `sample`, sample i sees row i of a per-sample tensor in every batch (and shared rows broadcast)."""
    rows_seen: list[list[float]] = []

    def network(x, t, *, tag):
        rows_seen.append(tag.flatten().tolist())
        return torch.zeros_like(x)

    tags = torch.arange(5.0).view(5, 1)
    adapter = ModelAdapter(network, SCHEDULE, network_rows=None)
    sample(adapter, [999, 0], (1, 2, 2), 5, batch_size=2, conditioning=Conditioning({"tag": tags}))
    assert rows_seen == [[0.0, 1.0], [0.0, 1.0], [2.0, 3.0], [2.0, 3.0], [4.0], [4.0]]


# ---------------------------------------------------------------- x̂0 processing


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_clip_sample_clamps_x0_but_not_eps(prediction_type):
    big = 10 * OUT
    clipped = ModelAdapter(lambda x, t: big.clone(), SCHEDULE, prediction_type=prediction_type,
                           x0_processing=X0Processing(clip_sample=True, clip_sample_range=0.5))(X, T)
    raw = ModelAdapter(lambda x, t: big.clone(), SCHEDULE, prediction_type=prediction_type)(X, T)
    assert raw.x0.abs().max() > 0.5
    torch.testing.assert_close(clipped.x0, raw.x0.clamp(-0.5, 0.5))
    torch.testing.assert_close(clipped.eps, raw.eps)  # ε̂ stays the model's, as in diffusers


@pytest.mark.parametrize(("ratio", "max_value"), [(0.995, 1.0), (0.995, 2.5), (0.9, 1.5), (0.5, 4.0)])
def test_thresholding_matches_diffusers(ratio, max_value):
    data = 3 * _randn(6, 3, 8, 8, seed=4)
    data[0] *= 0.1  # a sample whose quantile is below 1 (s clamps to 1)
    ours = X0Processing(thresholding=True, dynamic_thresholding_ratio=ratio, sample_max_value=max_value)(data)
    scheduler = DDIMScheduler(thresholding=True, dynamic_thresholding_ratio=ratio, sample_max_value=max_value)
    torch.testing.assert_close(ours, scheduler._threshold_sample(data.clone()))


def test_x0_processing_from_config_and_validation():
    processing = X0Processing.from_config(dict(DDIMScheduler(thresholding=True, sample_max_value=2.0).config))
    assert processing.thresholding and processing.clip_sample and processing.sample_max_value == 2.0
    with pytest.raises(ValueError) as caught:
        X0Processing(dynamic_thresholding_ratio=1.5)
    assert caught.value.errors()[0]["loc"] == ("dynamic_thresholding_ratio",)
    with pytest.raises(ValueError) as caught:
        X0Processing(clip_sample=True, bogus=1)
    assert caught.value.errors()[0]["loc"] == ("bogus",)


# ---------------------------------------------------------------- fixed-size network chunks


@pytest.mark.parametrize(("n", "network_rows"), [(7, 3), (8, 8), (3, 8), (1, 1), (10, 4)])
def test_network_rows_chunks_match_a_single_call_and_always_have_that_many_rows(n, network_rows):
    shapes: list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = []

    def row_independent(x, t, *, emb):
        shapes.append((tuple(x.shape), tuple(t.shape), tuple(emb.shape)))
        return torch.sin(x) * (t.view(-1, 1, 1, 1) + 1) + emb.sum(1).view(-1, 1, 1, 1)

    x = _randn(n, 2, 3, 3, seed=5)
    t = torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(6))
    emb = _randn(n, 4, seed=7)
    single = ModelAdapter(row_independent, SCHEDULE, network_rows=None).network_output(x, t, {"emb": emb})
    assert shapes == [((n, 2, 3, 3), (n,), (n, 4))]
    shapes.clear()
    chunked = ModelAdapter(row_independent, SCHEDULE, network_rows=network_rows).network_output(x, t, {"emb": emb})
    assert torch.equal(chunked, single)
    calls = -(-n // network_rows)
    assert shapes == [((network_rows, 2, 3, 3), (network_rows,), (network_rows, 4))] * calls


def test_network_rows_apply_to_guidance_rows_too():
    network = RowCounter(conditional_network)
    cond, uncond = _randn(4, 5, 6, seed=2), _randn(4, 5, 6, seed=3)
    ModelAdapter(network, SCHEDULE, network_rows=3)(
        X, T, Conditioning({"encoder_hidden_states": cond}, {"encoder_hidden_states": uncond}, 5.0))
    assert network.rows == [3, 3, 3]  # 8 rows (uncond + cond) in chunks of exactly 3


def test_device_and_dtype_come_from_the_module(tiny_unet):
    adapter = ModelAdapter(tiny_unet, SCHEDULE)
    assert adapter.device == torch.device("cpu")
    assert adapter.network_dtype == torch.float32 and adapter.dtype == torch.float32
    half = ModelAdapter(torch.nn.Linear(2, 2).half(), SCHEDULE)
    assert half.network_dtype == torch.float16 and half.dtype == torch.float32
