"""AdaptiveDDIMScheduler: equivalence with diffusers' DDIMScheduler and with our core, pipelines, save/load, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMPipeline,
    DDIMScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from diffusers.utils.torch_utils import randn_tensor

from adaptive_sampler.dropins import AdaptiveDDIMScheduler
from adaptive_sampler.errors import FieldError
from adaptive_sampler.model_adapter import ModelAdapter
from adaptive_sampler.sampler import sample
from adaptive_sampler.seeding import draw_noise, sample_generator
from helpers import build_tiny_conditional_unet

CUSTOM = [999, 950, 900, 800, 600, 400, 200, 100, 50, 10]
SHAPE = (3, 8, 8)
N = 2


def initial_noise(seed: int = 0) -> torch.Tensor:
    """The initial x_T of samples 0…N-1 exactly as the core sampler draws it."""
    return draw_noise([sample_generator(seed, i) for i in range(N)], SHAPE)


def step_noises(num_steps: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return [torch.randn((N, *SHAPE), generator=g) for _ in range(num_steps)]


@torch.no_grad()
def manual_loop(unet, scheduler, x, eta=0.0, noises=None, use_clipped_model_output=False, **set_kwargs):
    """The standard diffusers denoising loop, with the step noise given explicitly."""
    scheduler.set_timesteps(**set_kwargs)
    for k, t in enumerate(scheduler.timesteps):
        out = unet(x, t).sample
        x = scheduler.step(out, t, x, eta=eta, use_clipped_model_output=use_clipped_model_output,
                           variance_noise=noises[k] if eta > 0 else None).prev_sample
    return x


EQUIVALENT_CASES = [
    pytest.param(dict(timestep_spacing="leading"), 0.0, False, id="leading-eta0"),
    pytest.param(dict(timestep_spacing="leading"), 1.0, False, id="leading-eta1"),
    pytest.param(dict(timestep_spacing="leading", steps_offset=1), 0.0, False, id="leading-offset1-eta0"),
    pytest.param(dict(timestep_spacing="leading", steps_offset=1), 1.0, True, id="leading-offset1-eta1-clippedeps"),
    pytest.param(dict(timestep_spacing="trailing"), 0.0, False, id="trailing-eta0"),
    pytest.param(dict(timestep_spacing="trailing"), 1.0, False, id="trailing-eta1"),
    pytest.param(dict(timestep_spacing="trailing", prediction_type="v_prediction", set_alpha_to_one=False), 1.0,
                 False, id="trailing-vpred-eta1"),
    pytest.param(dict(timestep_spacing="leading", thresholding=True, sample_max_value=2.0), 0.5, False,
                 id="leading-thresholding-eta0.5"),
    # below 1 the threshold is always sample_max_value (torch.clamp with min > max), as diffusers computes it
    pytest.param(dict(timestep_spacing="trailing", thresholding=True, sample_max_value=0.5), 0.0, False,
                 id="trailing-thresholding-max0.5"),
]


@pytest.mark.parametrize(("config", "eta", "clipped"), EQUIVALENT_CASES)
def test_matches_ddim_scheduler_for_leading_and_trailing(tiny_rgb_unet, config, eta, clipped):
    """Where diffusers' list and its stride agree (leading, trailing), both schedulers run the same algorithm."""
    ddim = DDIMScheduler(**config)
    ours = AdaptiveDDIMScheduler.from_config(ddim.config)
    x, noises = initial_noise(), step_noises(10)
    expected = manual_loop(tiny_rgb_unet, ddim, x, eta, noises, clipped, num_inference_steps=10)
    got = manual_loop(tiny_rgb_unet, ours, x, eta, noises, clipped, num_inference_steps=10)
    assert torch.equal(ours.timesteps, ddim.timesteps)
    assert (got - expected).abs().max().item() < 1e-5


@torch.no_grad()
@pytest.mark.parametrize("use_custom", [False, True], ids=["linspace", "custom-list"])
def test_matches_core_sampler_over_explicit_pairs(tiny_rgb_unet, use_custom):
    ours = AdaptiveDDIMScheduler(timestep_spacing="linspace", custom_timesteps=CUSTOM if use_custom else None)
    x = manual_loop(tiny_rgb_unet, ours, initial_noise(), num_inference_steps=None if use_custom else 10)
    core = sample(ModelAdapter.from_diffusers(tiny_rgb_unet, ours.config, network_rows=None), ours.timesteps, SHAPE, N,
                  seed=0)
    assert ours.timesteps.tolist() == (CUSTOM if use_custom else [999, 888, 777, 666, 555, 444, 333, 222, 111, 0])
    assert (x - core.samples).abs().max().item() < 1e-5


def test_linspace_deliberately_differs_from_ddim_scheduler(tiny_rgb_unet):
    """diffusers #12633: with linspace, DDIMScheduler.step goes 999 -> 899 (stride T // N = 100) although its own
    list continues at 888; ours follows the list, so the two samplers disagree."""
    ddim = DDIMScheduler(timestep_spacing="linspace")
    ours = AdaptiveDDIMScheduler.from_config(ddim.config)
    expected = manual_loop(tiny_rgb_unet, ddim, initial_noise(), num_inference_steps=10)
    got = manual_loop(tiny_rgb_unet, ours, initial_noise(), num_inference_steps=10)
    assert torch.equal(ours.timesteps, ddim.timesteps)
    assert (got - expected).abs().max().item() > 1e-3


@torch.no_grad()
def test_drop_in_for_ddim_pipeline(tiny_rgb_unet):
    # DDIMPipeline.__init__ converts any scheduler to DDIMScheduler, so ours is assigned after construction
    pipe = DDIMPipeline(unet=tiny_rgb_unet, scheduler=DDIMScheduler())
    pipe.scheduler = AdaptiveDDIMScheduler.from_config(pipe.scheduler.config, custom_timesteps=CUSTOM)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(batch_size=N, generator=torch.Generator().manual_seed(0), num_inference_steps=len(CUSTOM),
                 output_type="pt").images
    assert isinstance(pipe.scheduler, AdaptiveDDIMScheduler)
    assert pipe.scheduler.timesteps.tolist() == CUSTOM

    x = randn_tensor((N, *SHAPE), generator=torch.Generator().manual_seed(0), dtype=tiny_rgb_unet.dtype)
    x = manual_loop(tiny_rgb_unet, AdaptiveDDIMScheduler(custom_timesteps=CUSTOM), x)
    assert (image - (x / 2 + 0.5).clamp(0, 1)).abs().max().item() < 1e-6

    # DDIMPipeline passes num_inference_steps=50 unless told otherwise; the error says how to fix the call
    with pytest.raises(ValueError, match=r"num_inference_steps: 50 differs .* num_inference_steps=10"):
        pipe(batch_size=1, output_type="pt")


@pytest.fixture(scope="module")
def sd_components() -> dict:
    unet = build_tiny_conditional_unet()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=16,
    ).eval()
    g = torch.Generator().manual_seed(1)
    return dict(unet=unet, vae=vae, prompt_embeds=torch.randn(1, 5, 16, generator=g),
                negative_prompt_embeds=torch.randn(1, 5, 16, generator=g))


def sd_pipeline(components: dict, scheduler) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline(
        vae=components["vae"], text_encoder=None, tokenizer=None, unet=components["unet"], scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_sd(pipe: StableDiffusionPipeline, components: dict, **kwargs):
    return pipe(prompt_embeds=components["prompt_embeds"], negative_prompt_embeds=components["negative_prompt_embeds"],
                guidance_scale=2.0, generator=torch.Generator().manual_seed(0), **kwargs).images


def test_stable_diffusion_pipeline_runs_our_list(sd_components):
    pipe = sd_pipeline(sd_components, AdaptiveDDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                            beta_end=0.012, steps_offset=1, clip_sample=False))
    seen: list[int] = []

    def record(pipeline, i, t, callback_kwargs):
        seen.append(int(t))
        return callback_kwargs

    image = run_sd(pipe, sd_components, timesteps=CUSTOM, output_type="np", callback_on_step_end=record)
    assert seen == CUSTOM
    assert image.shape == (1, 16, 16, 3) and np.isfinite(image).all()


def test_stable_diffusion_pipeline_matches_ddim_after_config_rewrite(sd_components):
    """StableDiffusionPipeline.__init__ rewrites clip_sample and steps_offset in the config of the scheduler it is
    given; ours must follow the rewritten config as DDIMScheduler does."""
    config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing")
    with pytest.warns(FutureWarning):
        ddim_pipe = sd_pipeline(sd_components, DDIMScheduler(**config))
    with pytest.warns(FutureWarning):
        ours_pipe = sd_pipeline(sd_components, AdaptiveDDIMScheduler(**config))
    assert ours_pipe.scheduler.config.clip_sample is False
    expected = run_sd(ddim_pipe, sd_components, num_inference_steps=5, output_type="latent", eta=1.0)
    got = run_sd(ours_pipe, sd_components, num_inference_steps=5, output_type="latent", eta=1.0)
    assert (got - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_stable_diffusion_img2img_pipeline_matches_ddim(sd_components, spacing):
    """The img2img pipeline enters the list mid-way (strength < 1); ours steps on from there as DDIMScheduler does."""
    config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                  clip_sample=False, timestep_spacing=spacing)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    latents = []
    for scheduler in (DDIMScheduler(**config), AdaptiveDDIMScheduler(**config)):
        pipe = StableDiffusionImg2ImgPipeline(
            vae=sd_components["vae"], text_encoder=None, tokenizer=None, unet=sd_components["unet"],
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        latents.append(run_sd(pipe, sd_components, image=image, strength=0.6, num_inference_steps=5,
                              output_type="latent"))
    assert (latents[0] - latents[1]).abs().max().item() < 1e-5


def test_save_pretrained_round_trips_custom_timesteps(tmp_path):
    AdaptiveDDIMScheduler(prediction_type="v_prediction", custom_timesteps=torch.tensor(CUSTOM)).save_pretrained(
        tmp_path)
    assert json.loads((tmp_path / "scheduler_config.json").read_text())["custom_timesteps"] == CUSTOM
    loaded = AdaptiveDDIMScheduler.from_pretrained(tmp_path)
    assert loaded.config.custom_timesteps == CUSTOM and loaded.config.prediction_type == "v_prediction"
    loaded.set_timesteps()
    assert loaded.timesteps.tolist() == CUSTOM
    loaded.set_timesteps(num_inference_steps=len(CUSTOM))
    assert loaded.timesteps.tolist() == CUSTOM
    # an explicit list overrides the stored one
    loaded.set_timesteps(timesteps=[500, 20])
    assert loaded.timesteps.tolist() == [500, 20]


def test_from_config_of_another_scheduler_keeps_its_keys():
    pndm = PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                         set_alpha_to_one=False, skip_prk_steps=True)
    ours = AdaptiveDDIMScheduler.from_config(pndm.config)
    assert (ours.config.beta_schedule, ours.config.steps_offset, ours.config.set_alpha_to_one) == (
        "scaled_linear", 1, False)
    assert torch.equal(ours.alphas_cumprod, pndm.alphas_cumprod)
    assert "DDIMScheduler" in [c.__name__ for c in ours.compatibles]


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_tables_add_noise_and_velocity_match_ddim_scheduler(set_alpha_to_one):
    config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=set_alpha_to_one)
    ours, ddim = AdaptiveDDIMScheduler(**config), DDIMScheduler(**config)
    for name in ("betas", "alphas", "alphas_cumprod", "final_alpha_cumprod"):
        assert torch.equal(getattr(ours, name), getattr(ddim, name)), name
    assert torch.equal(ours._get_variance(420, 400), ddim._get_variance(420, 400))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(N, *SHAPE, generator=g), torch.randn(N, *SHAPE, generator=g)
    t = torch.tensor([10, 700])
    assert torch.equal(ours.add_noise(x0, noise, t), ddim.add_noise(x0, noise, t))
    assert torch.equal(ours.get_velocity(x0, noise, t), ddim.get_velocity(x0, noise, t))


def test_add_noise_and_scale_model_input():
    ours = AdaptiveDDIMScheduler()
    x0 = torch.randn(N, *SHAPE, generator=torch.Generator().manual_seed(0))
    assert ours.scale_model_input(x0, 10) is x0
    assert (ours.init_noise_sigma, ours.order, len(ours)) == (1.0, 1, 1000)


@pytest.mark.parametrize(
    ("timesteps", "message"),
    [
        ([10, 20], r"timesteps\[1\]: 20 is above timesteps\[0\]=10; timesteps must be strictly descending"),
        ([1000, 10], r"timesteps\[0\]: 1000 is outside \[0, 999\]"),
        ([], r"timesteps: \[\] is empty"),
    ],
    ids=["ascending", "out-of-range", "empty"],
)
def test_bad_timesteps_name_the_field(timesteps, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveDDIMScheduler().set_timesteps(timesteps=timesteps)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match=r"custom_timesteps\[1\]: 5 repeats"):
        AdaptiveDDIMScheduler(custom_timesteps=[5, 5])
    with pytest.raises(ValueError, match=r"num_inference_steps, timesteps: both are given"):
        AdaptiveDDIMScheduler().set_timesteps(10, timesteps=CUSTOM)
    with pytest.raises(ValueError, match=r"num_inference_steps: None needs timesteps"):
        AdaptiveDDIMScheduler().set_timesteps()
    with pytest.raises(ValueError, match=r"num_inference_steps: 1001 is outside \[1, 1000\]"):
        AdaptiveDDIMScheduler().set_timesteps(1001)
    with pytest.raises(ValueError, match=r"timestep_spacing: 'karras' is not one of"):
        AdaptiveDDIMScheduler(timestep_spacing="karras")


def one_step(scheduler, t, x):
    """`step` at t with a fixed model output, so that two results differ only by the (t, t_prev) pair."""
    return scheduler.step(0.1 * x, t, x).prev_sample


def test_step_is_stateless():
    """Each step depends on its timestep argument only: repeated, out of order or in a second pass."""
    ours = AdaptiveDDIMScheduler(custom_timesteps=CUSTOM)
    ours.set_timesteps()
    x = torch.randn(N, *SHAPE, generator=torch.Generator().manual_seed(0))
    first = [one_step(ours, t, x) for t in ours.timesteps]
    again = [one_step(ours, t, x) for t in ours.timesteps]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert torch.equal(one_step(ours, 600, x), first[CUSTOM.index(600)])
    assert torch.equal(one_step(ours, torch.tensor(600), x), first[CUSTOM.index(600)])


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_img2img_start_mid_list_matches_ddim_scheduler(tiny_rgb_unet, spacing):
    """img2img pipelines noise the image to a mid-list timestep and step on from there."""
    ddim = DDIMScheduler(timestep_spacing=spacing)
    ours = AdaptiveDDIMScheduler.from_config(ddim.config)
    results = []
    with torch.no_grad():
        for scheduler in (ddim, ours):
            scheduler.set_timesteps(10)
            x = scheduler.add_noise(initial_noise(1), initial_noise(2), scheduler.timesteps[4:5])
            for t in scheduler.timesteps[4:]:
                x = scheduler.step(tiny_rgb_unet(x, t).sample, t, x).prev_sample
            results.append(x)
    assert (results[0] - results[1]).abs().max().item() < 1e-5


def test_off_list_timestep_steps_to_the_next_entry_below():
    ours = AdaptiveDDIMScheduler(set_alpha_to_one=False)
    ours.set_timesteps(timesteps=[500, 20])
    assert [ours.previous_timestep(t) for t in (999, 500, 300, 20, 5)] == [500, 20, 20, -1, -1]
    x = torch.randn(N, *SHAPE, generator=torch.Generator().manual_seed(0))
    # the same (t, t_prev) pair as a list that holds t: 300 -> 20, and 5 -> the final ᾱ (ᾱ_0 here)
    for t, listed in ((300, [300, 20]), (5, [5])):
        reference = AdaptiveDDIMScheduler(set_alpha_to_one=False)
        reference.set_timesteps(timesteps=listed)
        assert torch.equal(one_step(ours, t, x), one_step(reference, t, x))


def test_sample_max_value_below_one_is_accepted_when_thresholding_is_off():
    ours = AdaptiveDDIMScheduler(sample_max_value=0.5, clip_sample_range=-1.0, clip_sample=False)
    assert ours.config.sample_max_value == 0.5


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (dict(thresholding=True, sample_max_value=0.0), r"sample_max_value: 0.0 must be > 0 with thresholding=True"),
        (dict(thresholding=True, dynamic_thresholding_ratio=1.0), r"dynamic_thresholding_ratio: 1.0 is outside"),
        (dict(clip_sample_range=0.0), r"clip_sample_range: 0.0 must be > 0 with clip_sample=True"),
        (dict(custom_timesteps=[900.5, 10]), r"custom_timesteps\[0\]: 900.5 is not an integer"),
    ],
    ids=["max-value", "ratio", "clip-range", "fractional-list"],
)
def test_bad_settings_name_the_field(config, message):
    with pytest.raises(FieldError, match=message):
        AdaptiveDDIMScheduler(**config)


def test_step_errors():
    scheduler = AdaptiveDDIMScheduler()
    x = torch.zeros(1, *SHAPE)
    with pytest.raises(ValueError, match="run set_timesteps first"):
        scheduler.step(x, 999, x)
    scheduler.set_timesteps(timesteps=[500, 20])
    with pytest.raises(FieldError, match=r"timestep: 1000 is outside \[0, 999\]"):
        scheduler.step(x, 1000, x)
    with pytest.raises(FieldError, match=r"timestep: -1 is outside \[0, 999\]"):
        scheduler.step(x, -1, x)
    with pytest.raises(FieldError, match=r"timestep: 20.5 is not an integer"):
        scheduler.step(x, torch.tensor(20.5), x)
    with pytest.raises(FieldError, match=r"timestep: \(2,\) is the shape of a tensor with more than one value"):
        scheduler.step(x, torch.tensor([500, 20]), x)
