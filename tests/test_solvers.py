"""DPM-Solver++(2M) and UniPC: equivalence with diffusers over explicit lists, determinism, compaction of their
history on early exit, guidance, errors, and the CLI's --solver."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
import torch
from diffusers import (
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)

from adaptive_sampler.cli import main
from adaptive_sampler.finish import Finish
from adaptive_sampler.model_adapter import Conditioning, ModelAdapter
from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.policies import make_policy
from adaptive_sampler.sampler import sample
from adaptive_sampler.seeding import draw_noise, sample_generator
from adaptive_sampler.solvers import make_solver
from helpers import build_tiny_conditional_unet, build_tiny_unet

SOLVER_NAMES = ("dpmpp-2m", "unipc")
DIFFUSERS_SCHEDULERS = {"dpmpp-2m": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler}
SHAPE = (3, 8, 8)
N = 2


def initial_noise(n: int = N, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    """x_T of samples 0…n-1 exactly as the core sampler draws it (seed 0)."""
    return draw_noise([sample_generator(0, i) for i in range(n)], shape)


def plan(policy: str, steps: int) -> list[int]:
    """A built-in policy's list, or for "custom" a seeded random list that does not start at T - 1."""
    if policy == "custom":
        rng = np.random.default_rng(steps)
        return sorted(rng.choice(np.arange(1, 999), steps, replace=False).tolist(), reverse=True)
    return make_policy(policy).timesteps(steps, NoiseSchedule.from_config({})).tolist()


def set_diffusers_list(scheduler, timesteps: list[int]) -> None:
    """DPMSolverMultistepScheduler takes `timesteps=`. UniPCMultistepScheduler (diffusers 0.42) takes no custom list
    (its `sigmas=` needs flow sigmas), so its list and σs are set the way its set_timesteps computes them for a
    spacing: σ interpolated at each t, then σ = 0 (final_sigmas_type="zero")."""
    if isinstance(scheduler, DPMSolverMultistepScheduler):
        scheduler.set_timesteps(timesteps=timesteps)
        return
    scheduler.set_timesteps(len(timesteps))
    table = ((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod).sqrt().numpy()
    sigmas = np.interp(timesteps, np.arange(len(table)), table)
    scheduler.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
    scheduler.timesteps = torch.tensor(timesteps, dtype=torch.int64)


@torch.no_grad()
def diffusers_loop(model_output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scheduler,
                   timesteps: list[int], x: torch.Tensor) -> torch.Tensor:
    """The standard diffusers denoising loop over `timesteps`."""
    set_diffusers_list(scheduler, timesteps)
    for t in scheduler.timesteps:
        x = scheduler.step(model_output(x, t), t, x).prev_sample
    return x


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
@pytest.mark.parametrize("steps", [5, 8, 20])
@pytest.mark.parametrize("policy", ["uniform", "trailing", "karras", "logsnr", "custom"])
@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_matches_diffusers_on_the_same_list(tiny_rgb_unet, solver, policy, steps, prediction_type):
    """Same list, same x_T: our core with the solver equals diffusers' scheduler (solver_order=2,
    lower_order_final=True, final_sigmas_type="zero", its defaults)."""
    scheduler = DIFFUSERS_SCHEDULERS[solver](prediction_type=prediction_type)
    ts = plan(policy, steps)
    expected = diffusers_loop(lambda x, t: tiny_rgb_unet(x, t).sample, scheduler, ts, initial_noise())
    got = sample(ModelAdapter.from_diffusers(tiny_rgb_unet, scheduler.config), ts, SHAPE, N, solver=make_solver(solver))
    error = (got.samples - expected).abs().max().item()
    if prediction_type == "v_prediction":
        assert error < 1e-4
    else:
        # an untrained ε-model's x̂0 = (x - σ ε̂) / α reaches ~600 (1/α ≈ 156 at t = 999); float32 agreement is
        # relative there
        assert error / expected.abs().max().item() < 2e-5


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_solvers_differ_from_ddim_and_from_each_other(tiny_rgb_unet, solver):
    """The equivalence above is not vacuous: on 8 uniform steps the three update rules give different samples."""
    adapter = ModelAdapter.from_diffusers(tiny_rgb_unet, {"prediction_type": "v_prediction"})
    ts = plan("uniform", 8)
    ours = sample(adapter, ts, SHAPE, N, solver=make_solver(solver)).samples
    for other in {"ddim", *SOLVER_NAMES} - {solver}:
        assert (ours - sample(adapter, ts, SHAPE, N, solver=make_solver(other)).samples).abs().max() > 1e-3


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_last_step_returns_x0_and_is_deterministic_across_batch_sizes(tiny_rgb_unet, solver):
    adapter = ModelAdapter.from_diffusers(tiny_rgb_unet, {"prediction_type": "v_prediction"}, network_rows=8)
    ts = plan("karras", 8)
    single = sample(adapter, ts, SHAPE, 4, batch_size=1, solver=make_solver(solver), trace=True)
    batched = sample(adapter, ts, SHAPE, 4, batch_size=4, solver=make_solver(solver))
    assert torch.equal(single.samples, batched.samples)
    # the last pair goes to σ = 0, where both solvers' first-order step is exactly x̂0
    last_x0 = torch.cat([step.x0 for step in single.trace if step.step == len(ts) - 1])
    assert torch.equal(single.samples, last_x0)


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_early_exit_keeps_the_history_of_the_other_samples(tiny_rgb_unet, solver):
    """Sample 1 exits at step 2; the multistep history of samples 0, 2, 3 must stay row-aligned after compaction."""
    adapter = ModelAdapter.from_diffusers(tiny_rgb_unet, {"prediction_type": "v_prediction"}, network_rows=8)
    ts = plan("uniform", 8)
    full = sample(adapter, ts, SHAPE, 4, solver=make_solver(solver), trace=True)

    def exit_sample_1_at_step_2(info):
        return (info.sample_indices == 1) if info.step == 2 else None

    cut = sample(adapter, ts, SHAPE, 4, solver=make_solver(solver), monitor=exit_sample_1_at_step_2,
                 finish=Finish(mode="x0"))
    kept = [0, 2, 3]
    assert torch.equal(cut.samples[kept], full.samples[kept])
    assert torch.equal(cut.samples[1], full.trace[2].x0[1])
    assert cut.nfe.tolist() == [8, 3, 8, 8]


@pytest.fixture(scope="module")
def conditional_unet() -> UNet2DConditionModel:
    return build_tiny_conditional_unet()


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_classifier_free_guidance_matches_diffusers(conditional_unet, solver):
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(N, 5, 16, generator=g), torch.randn(1, 5, 16, generator=g)
    scheduler = DIFFUSERS_SCHEDULERS[solver](prediction_type="v_prediction")
    adapter = ModelAdapter.from_diffusers(conditional_unet, scheduler.config)
    conditioning = Conditioning(cond={"encoder_hidden_states": cond}, uncond={"encoder_hidden_states": uncond},
                                guidance_scale=3.0)
    ts, shape = plan("trailing", 8), (4, 8, 8)
    got = sample(adapter, ts, shape, N, solver=make_solver(solver), conditioning=conditioning).samples

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        states = torch.cat([uncond.expand(N, -1, -1), cond])
        out_uncond, out_cond = conditional_unet(torch.cat([x, x]), t, encoder_hidden_states=states).sample.chunk(2)
        return out_uncond + 3.0 * (out_cond - out_uncond)

    expected = diffusers_loop(guided, scheduler, ts, initial_noise(N, shape))
    assert torch.isfinite(got).all()
    assert (got - expected).abs().max().item() < 1e-4


def test_unknown_solver_names_the_field():
    with pytest.raises(ValueError, match=r"^solver: 'nope' is not one of ddim, dpmpp-2m, unipc"):
        make_solver("nope")


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_eta_with_a_deterministic_solver_names_eta(tiny_rgb_unet, solver):
    adapter = ModelAdapter.from_diffusers(tiny_rgb_unet, {})
    assert make_solver(solver).supports_eta is False
    with pytest.raises(ValueError, match=rf"^eta: 0.5 needs a stochastic solver; '{solver}' is deterministic"):
        sample(adapter, [999, 500], SHAPE, 1, eta=0.5, solver=make_solver(solver))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny-model")
    build_tiny_unet().save_pretrained(folder)
    DDPMScheduler().save_config(folder)
    return str(folder)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    code = "from adaptive_sampler.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_cli_sample_with_a_solver(tiny_model_dir, tmp_path):
    report = tmp_path / "report.json"
    done = run_cli("sample", "--solver", "dpmpp-2m", "--steps", "5", "--n", "2", "--model", tiny_model_dir,
                   "--device", "cpu", "--json", str(report))
    assert done.returncode == 0, done.stderr
    assert "dpmpp-2m" in done.stdout
    payload = json.loads(report.read_text())
    assert (payload["solver"], payload["steps"], payload["nfe_mean"]) == ("dpmpp-2m", 5, 5.0)


def test_cli_bogus_solver_is_one_line_naming_the_flag(tiny_model_dir):
    done = run_cli("sample", "--solver", "bogus", "--steps", "5", "--n", "2", "--model", tiny_model_dir)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--solver: 'bogus' is not one of ddim, dpmpp-2m, unipc" in lines[0]


def test_cli_eval_bogus_solver_names_the_flag(tiny_model_dir, monkeypatch, capsys):
    """The same through `eval`, in-process (a subprocess costs ~10 s of imports on this machine)."""
    monkeypatch.setattr(sys, "argv", ["adaptive-sampler", "eval", "--solver", "bogus", "--model", tiny_model_dir])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code != 0
    assert capsys.readouterr().err.strip() == "error: --solver: 'bogus' is not one of ddim, dpmpp-2m, unipc"
