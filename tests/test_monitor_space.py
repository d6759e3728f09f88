"""Monitors on a latent model (issue 11): `space=latent` sees the latents, `space=image` the VAE-decoded x̂0, decoded
only at the steps the monitor reads; both calibrate exactly (the offline simulation exits where the online run
exits)."""

from __future__ import annotations

import pytest
import torch

from adaptive_sampler.finish import Finish
from adaptive_sampler.models import load_model
from adaptive_sampler.monitors import AnyOf, ChangeMonitor, monitor_from_spec
from adaptive_sampler.monitors.calibration import PsnrTarget, calibrate_threshold, record_x0_trace
from adaptive_sampler.monitors.space import ImageSpace, decode_cost
from adaptive_sampler.pipeline import Conditions
from adaptive_sampler.policies import Uniform
from adaptive_sampler.sampler import sample


@pytest.fixture(scope="module")
def sd(tiny_sd_dir):
    return load_model(tiny_sd_dir).with_conditions(Conditions(prompts=("a photo of cat", "a red car")))


def _online(model, spec: str, timesteps: torch.Tensor, seed: int, n: int) -> tuple[torch.Tensor, object]:
    monitor = AnyOf(monitor_from_spec(spec, decode=model.decode))
    result = sample(model.adapter(), timesteps, model.sample_shape, n, seed=seed, batch_size=3, monitor=monitor,
                    conditioning=model.conditioning, finish=Finish(mode="x0"))
    return result.nfe, monitor


@pytest.mark.parametrize("every", [1, 3])
def test_an_image_space_monitor_exits_where_the_decoded_trace_says(sd, every):
    timesteps = Uniform().timesteps(9, sd.adapter().schedule)
    trace = record_x0_trace(sd.adapter(), sd.sample_shape, timesteps, [0], 5, conditioning=sd.conditioning,
                            decode=sd.decode, space="image")
    assert trace.x0.shape == (5, 9, 3, 16, 16) and trace.images is None
    spec = f"ssim:0.05,every={every}"
    bare = monitor_from_spec(spec)
    scores = bare.replay_scores(trace.step_infos(), trace.n, trace.num_steps)
    finite = scores[torch.isfinite(scores)].unique()  # sorted; a threshold between two scores, so that float
    threshold = float(finite[len(finite) // 2 - 1: len(finite) // 2 + 1].mean())  # rounding cannot flip an exit
    expected = bare.simulate_exits(scores, threshold) + 1
    nfe, monitor = _online(sd, f"ssim:{threshold!r},every={every},space=image", timesteps, 0, 5)
    assert torch.equal(nfe, expected)
    rows, seconds = decode_cost(monitor)
    assert rows > 0 and seconds > 0
    if every == 3:  # only the check steps and the steps before them are decoded
        assert rows < int(nfe.sum())


def test_space_latent_is_the_default_and_sees_latents(sd):
    assert not isinstance(monitor_from_spec("x0-l2:0.1", decode=sd.decode), ImageSpace)
    assert isinstance(monitor_from_spec("x0-l2:0.1,space=image", decode=sd.decode), ImageSpace)
    assert monitor_from_spec("x0-l2:0.1,space=image", decode=sd.decode).spec() == "x0-l2:0.1,space=image"
    assert not isinstance(monitor_from_spec("x0-l2:0.1,space=image"), ImageSpace)  # a pixel model: x̂0 is the image


@pytest.mark.parametrize("space", ["latent", "image"])
def test_calibration_in_either_space_is_exact_online(sd, space):
    timesteps = Uniform().timesteps(8, sd.adapter().schedule)
    cal, held = (record_x0_trace(sd.adapter(), sd.sample_shape, timesteps, [seed], 4, batch_size=4,
                                 conditioning=sd.conditioning, decode=sd.decode, space=space) for seed in (0, 1))
    result = calibrate_threshold(ChangeMonitor("l2", 0.0), PsnrTarget(20), cal, held)
    assert result.monitor.endswith(",space=image") == (space == "image")
    nfe, _ = _online(sd, result.monitor, timesteps, 1, 4)
    assert float(nfe.double().mean()) == pytest.approx(result.heldout.nfe_mean, abs=1e-12)
