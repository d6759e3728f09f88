"""The DPM-Solver++(2M) and UniPC drop-ins: the project's samples on the same list (integer and fractional, ε and v),
diffusers' own DPM-Solver++ on integer lists, img2img mid-list, `use_schedule` in an unmodified
StableDiffusionPipeline (tiny SD folder, embedded-t2i), and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

from adaptive_sampler import (
    AdaptiveDDIMScheduler,
    AdaptiveDPMSolverMultistepScheduler,
    AdaptiveUniPCMultistepScheduler,
    use_schedule,
)
from adaptive_sampler.errors import FieldError
from adaptive_sampler.model_adapter import ModelAdapter
from adaptive_sampler.models import EMBEDDED_T2I_GUIDANCE, embedded_t2i_dir, load_model
from adaptive_sampler.pipeline import Conditions
from adaptive_sampler.sampler import sample
from adaptive_sampler.schedules import ModelIdentity, NoiseScheduleSpec, ScheduleArtifact
from adaptive_sampler.seeding import draw_noise, sample_generator
from adaptive_sampler.solvers import make_solver

DROPINS = {"dpmpp-2m": AdaptiveDPMSolverMultistepScheduler, "unipc": AdaptiveUniPCMultistepScheduler}
INTEGER = [961, 800, 700, 451, 250, 120, 81, 30, 0]  # non-uniform, as a learned list is
FRACTIONAL = [990.5, 812.25, 640.0, 433.75, 260.5, 118.125, 40.5, 3.25]
SHAPE = (3, 8, 8)
N = 2
SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def initial_noise(n: int = N, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    """x_T of samples 0 … n-1 exactly as the project's sampler draws it (seed 0)."""
    return draw_noise([sample_generator(0, i) for i in range(n)], shape)


@torch.no_grad()
def diffusers_loop(unet, scheduler, x: torch.Tensor, begin: int = 0, **set_kwargs) -> torch.Tensor:
    """The standard diffusers denoising loop, entering the list at index `begin` as img2img pipelines do."""
    scheduler.set_timesteps(**set_kwargs)
    if begin:
        scheduler.set_begin_index(begin)
    for t in scheduler.timesteps[begin:]:
        x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
    return x


def close(got: torch.Tensor, expected: torch.Tensor, prediction_type: str) -> bool:
    error = (got - expected).abs().max().item()
    # an untrained ε-model's x̂0 = (x - σ ε̂) / α reaches ~600 at t near T: float32 agreement is relative there
    return error < 1e-4 if prediction_type == "v_prediction" else error / expected.abs().max().item() < 2e-5


@pytest.mark.parametrize("timesteps", [INTEGER, FRACTIONAL], ids=["integer", "fractional"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("solver", list(DROPINS))
def test_drop_in_gives_the_project_s_samples(tiny_rgb_unet, solver, prediction_type, timesteps):
    scheduler = DROPINS[solver](prediction_type=prediction_type)
    expected = sample(ModelAdapter.from_diffusers(tiny_rgb_unet, scheduler.config), timesteps, SHAPE, N,
                      solver=make_solver(solver)).samples
    got = diffusers_loop(tiny_rgb_unet, scheduler, initial_noise(), timesteps=timesteps)
    assert scheduler.timesteps.tolist() == timesteps
    assert close(got, expected, prediction_type)
    # the same list as σs (ScheduleArtifact.to_sigmas' layout, final 0 included) is the same pass
    by_sigmas = diffusers_loop(tiny_rgb_unet, DROPINS[solver](prediction_type=prediction_type), initial_noise(),
                               sigmas=scheduler.sigmas.tolist())
    assert torch.equal(by_sigmas, got)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_dpm_drop_in_equals_diffusers_on_integer_timesteps(tiny_rgb_unet, prediction_type):
    ours = AdaptiveDPMSolverMultistepScheduler(prediction_type=prediction_type)
    theirs = DPMSolverMultistepScheduler(prediction_type=prediction_type)
    got = diffusers_loop(tiny_rgb_unet, ours, initial_noise(), timesteps=INTEGER)
    expected = diffusers_loop(tiny_rgb_unet, theirs, initial_noise(), timesteps=INTEGER)
    assert torch.equal(ours.sigmas, theirs.sigmas) and torch.equal(ours.timesteps, theirs.timesteps)
    assert torch.equal(got, expected)
    # and with a step count only, it is diffusers' scheduler, unchanged
    assert torch.equal(diffusers_loop(tiny_rgb_unet, ours, initial_noise(), num_inference_steps=6),
                       diffusers_loop(tiny_rgb_unet, theirs, initial_noise(), num_inference_steps=6))


@pytest.mark.parametrize("solver", list(DROPINS))
def test_img2img_mid_list_and_a_second_pass(tiny_rgb_unet, solver):
    """Entering at index k (`set_begin_index`, as img2img pipelines do) runs the project's pass over the rest of the
    list from that x, with no history before k; `set_timesteps` again starts a fresh pass."""
    scheduler = DROPINS[solver](prediction_type="v_prediction")
    x = initial_noise()
    got = diffusers_loop(tiny_rgb_unet, scheduler, x, begin=3, timesteps=INTEGER)
    adapter = ModelAdapter.from_diffusers(tiny_rgb_unet, scheduler.config)
    expected = sample(adapter, INTEGER[3:], SHAPE, N, solver=make_solver(solver), noise=x).samples
    assert close(got, expected, "v_prediction")
    assert torch.equal(diffusers_loop(tiny_rgb_unet, scheduler, x, begin=3, timesteps=INTEGER), got)
    assert torch.equal(scheduler.scale_model_input(x, scheduler.timesteps[0]), x)


# ---------------------------------------------------------------- use_schedule in StableDiffusionPipeline
def artifact(solver: str, timesteps: list, total: int = 1000, **betas: object) -> ScheduleArtifact:
    spec = NoiseScheduleSpec(num_train_timesteps=total, **{**SD_BETAS, **betas})  # type: ignore[arg-type]
    return ScheduleArtifact(num_train_timesteps=total, timesteps=timesteps, solver=solver,
                            model=ModelIdentity(name="test"), method="test", noise_schedule=spec)


def pipeline_images(folder, schedule: ScheduleArtifact, prompts: list[str], negative: str,
                    guidance: float) -> torch.Tensor:
    """An unmodified StableDiffusionPipeline, `use_schedule` and the project's noise as `latents=`, in [-1, 1]."""
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    kwargs = use_schedule(pipe, schedule)
    shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    images = pipe(prompt=prompts, negative_prompt=[negative] * len(prompts), guidance_scale=guidance,
                  latents=initial_noise(len(prompts), shape), output_type="pt", **kwargs).images
    return images * 2 - 1


def project_images(folder, schedule: ScheduleArtifact, prompts: list[str], negative: str) -> torch.Tensor:
    model = load_model(folder).with_conditions(Conditions(prompts=tuple(prompts), negative_prompt=negative))
    latents = sample(model.adapter(), schedule.timesteps, model.sample_shape, len(prompts),
                     conditioning=model.conditioning, solver=make_solver(schedule.solver)).samples
    return model.decode(latents)


@pytest.mark.parametrize(("solver", "timesteps"), [
    *[(solver, INTEGER) for solver in ("ddim", *DROPINS)], *[(solver, FRACTIONAL) for solver in DROPINS],
])
def test_use_schedule_in_stable_diffusion_gives_the_project_s_images(tiny_sd_dir, solver, timesteps):
    schedule = artifact(solver, timesteps)
    prompts = ["a photo of cat", "a red car"]
    expected = project_images(tiny_sd_dir, schedule, prompts, "a dog")
    got = pipeline_images(tiny_sd_dir, schedule, prompts, "a dog", 7.5)  # the project's default for an SD folder
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)


@pytest.mark.skipif(not embedded_t2i_dir().is_dir(), reason="embedded-t2i is not installed here")
@pytest.mark.parametrize("solver", list(DROPINS))
def test_a_learned_list_runs_in_stable_diffusion_on_embedded_t2i(solver):
    """The shipped learned DPM-Solver++(2M) list, and for UniPC the same list (the catalogue ships embedded-t2i lists
    for DPM-Solver++ only)."""
    shipped = ScheduleArtifact.read(Path(__file__).parents[1] / "policies" / "embedded-t2i" / "dpmpp-2m-10.json")
    schedule = shipped.model_copy(update={"solver": solver})
    prompts = ["a shoe", "a bag"]
    expected = project_images(embedded_t2i_dir(), schedule, prompts, "")
    got = pipeline_images(embedded_t2i_dir(), schedule, prompts, "", EMBEDDED_T2I_GUIDANCE)  # the model's default
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("solver", list(DROPINS))
def test_img2img_pipeline_enters_the_list_mid_way(tiny_sd_dir, solver):
    """StableDiffusionImg2ImgPipeline with `timesteps=` and strength 0.6 runs the tail of the list (its
    `set_begin_index`); the DPM-Solver++ drop-in gives diffusers' own scheduler's latents there."""
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_sd_dir, safety_checker=None, feature_extractor=None,
                                                          requires_safety_checker=False, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))

    def run(scheduler) -> tuple[torch.Tensor, list[int]]:
        pipe.scheduler, seen = scheduler, []

        def record(pipeline, i, t, callback_kwargs):
            seen.append(int(t))
            return callback_kwargs

        latents = pipe(prompt="a red car", image=image, strength=0.6, timesteps=INTEGER, output_type="latent",
                       generator=torch.Generator().manual_seed(0), callback_on_step_end=record).images
        return latents, seen

    config = pipe.scheduler.config
    got, seen = run(DROPINS[solver].from_config(config))
    assert seen == INTEGER[4:] and torch.isfinite(got).all()  # 9 steps, strength 0.6: enter at index 9 - 5
    if solver == "dpmpp-2m":
        assert torch.equal(got, run(DPMSolverMultistepScheduler.from_config(config))[0])


def test_use_schedule_installs_the_artifact_s_drop_in(tiny_sd_dir):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False, local_files_only=True)
    for solver, cls in [("ddim", AdaptiveDDIMScheduler), *DROPINS.items()]:
        assert use_schedule(pipe, artifact(solver, INTEGER)) == {"timesteps": INTEGER}
        assert type(pipe.scheduler) is cls and pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.scheduler.config.final_sigmas_type == "zero"


# ---------------------------------------------------------------- errors name the field
@pytest.mark.parametrize("cls", list(DROPINS.values()))
@pytest.mark.parametrize(
    ("kwargs", "field", "rule"),
    [
        (dict(timesteps=[10, 20]), "timesteps[1]", "strictly descending"),
        (dict(timesteps=[1000, 10]), "timesteps[0]", "outside [0, 999]"),
        (dict(timesteps=[500, float("nan")]), "timesteps[1]", "not a finite number"),
        (dict(sigmas=[1e4, 1.0, 0.0]), "sigmas[0]", "outside"),
        (dict(sigmas=[1.0, 2.0]), "sigmas[1]", "strictly descending"),
    ],
)
def test_bad_lists_name_the_field(cls, kwargs, field, rule):
    with pytest.raises(FieldError) as caught:
        cls().set_timesteps(**kwargs)
    assert caught.value.field == field and rule in caught.value.rule


@pytest.mark.parametrize("cls", list(DROPINS.values()))
def test_bad_settings_and_arguments(cls):
    with pytest.raises(FieldError) as caught:
        cls(use_karras_sigmas=True).set_timesteps(timesteps=INTEGER)
    assert caught.value.field == "use_karras_sigmas"
    with pytest.raises(ValueError, match=r"num_inference_steps, timesteps: both are given"):
        cls().set_timesteps(10, timesteps=INTEGER)
    with pytest.raises(FieldError) as caught:  # only the DDIM drop-in refuses fractional lists
        AdaptiveDDIMScheduler().set_timesteps(timesteps=FRACTIONAL)
    assert caught.value.field == "timesteps[0]" and "not an integer" in caught.value.rule


def test_use_schedule_refuses_a_list_made_for_another_model(tiny_sd_dir):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False, local_files_only=True)
    cases = [
        (dict(schedule=artifact("unipc", [400, 100], total=500)), "num_train_timesteps"),
        (dict(schedule=artifact("unipc", INTEGER, beta_schedule="linear")), "noise_schedule.beta_schedule"),
        (dict(schedule=artifact("unipc", INTEGER), solver="dpmpp-2m"), "solver"),
        (dict(schedule=artifact("ddim", FRACTIONAL)), "timesteps"),
    ]
    for kwargs, field in cases:
        with pytest.raises(FieldError) as caught:
            use_schedule(pipe, kwargs.pop("schedule"), **kwargs)
        assert caught.value.field == field
