"""Fractional timesteps: ᾱ interpolated in log-SNR, float t into the network, artifacts and exporters.

Integer lists keep their old path (int64, the ᾱ table); the loop goldens (test_loop_golden.py) hold them bitwise.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from adaptive_sampler import Finish, ModelAdapter, sample
from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.schedules.artifact import ModelIdentity, NoiseScheduleSpec, ScheduleArtifact
from adaptive_sampler.seeding import draw_noise, sample_generator
from adaptive_sampler.solvers import make_solver
from helpers import TINY_SHAPE, build_tiny_unet, run_cli, tiny_scheduler_config, write_tiny_model_dir

SCHEDULE = NoiseSchedule.from_config(tiny_scheduler_config())


def test_alpha_bar_at_whole_floats_is_the_table_and_between_steps_is_log_snr_interpolated():
    table = SCHEDULE.alphas_cumprod
    whole = torch.tensor([999.0, 450.0, 0.0, -1.0])
    assert torch.equal(SCHEDULE.alpha_bar(whole), torch.cat([table[[999, 450, 0]], torch.ones(1)]))
    lam = SCHEDULE.log_snr()
    a = SCHEDULE.alpha_bar(torch.tensor([450.5, 450.25], dtype=torch.float64)).double()
    expected = torch.sigmoid(torch.stack([(lam[450] + lam[451]) / 2, 0.75 * lam[450] + 0.25 * lam[451]]))
    torch.testing.assert_close(a, expected, rtol=1e-6, atol=0)
    assert table[451] < a[0] < a[1] < table[450]
    assert a.dtype == torch.float64 and SCHEDULE.alpha_bar(torch.tensor([1.5])).dtype == torch.float32


def test_sigma_at_reads_the_table_at_integers_and_matches_the_interpolated_alpha_bar_between_them():
    steps = torch.tensor([999, 450, 0])
    assert torch.equal(SCHEDULE.sigma_at(steps), SCHEDULE.sigmas()[steps])
    t = torch.tensor([999.0, 450.5, 12.25, 0.0], dtype=torch.float64)
    sigma, a = SCHEDULE.sigma_at(t), SCHEDULE.alpha_bar(t).double()
    assert sigma.dtype == torch.float64 and bool((sigma[:-1] > sigma[1:]).all())
    torch.testing.assert_close(sigma, ((1 - a) / a).sqrt(), rtol=1e-5, atol=0)  # ᾱ is float32 (1 - ᾱ: ~1e-6)


def test_diffusers_unet_takes_float_timesteps_through_its_sinusoidal_embedding():
    unet = build_tiny_unet()
    x = torch.randn(2, *TINY_SHAPE, generator=torch.Generator().manual_seed(0))
    at_int = unet(x, torch.tensor([10, 10])).sample
    assert torch.equal(unet(x, torch.tensor([10.0, 10.0], dtype=torch.float64)).sample, at_int)
    between = unet(x, torch.tensor([10.5, 10.5])).sample
    assert torch.isfinite(between).all() and not torch.equal(between, at_int)


def test_one_fractional_ddim_step_is_x0_from_the_interpolated_alpha_bar():
    unet = build_tiny_unet()
    adapter = ModelAdapter.from_diffusers(unet, {**tiny_scheduler_config(), "clip_sample": False})
    result = sample(adapter, [450.5], TINY_SHAPE, 3, batch_size=3, seed=7)
    x = draw_noise([sample_generator(7, i) for i in range(3)], TINY_SHAPE)
    t = torch.full((3,), 450.5, dtype=torch.float64)
    eps = unet(x, t).sample
    a = SCHEDULE.alpha_bar(t).view(-1, 1, 1, 1)
    torch.testing.assert_close(result.samples, (x - (1 - a).sqrt() * eps) / a.sqrt(), rtol=1e-5, atol=1e-5)
    assert result.timesteps == [[450.5]] * 3


@pytest.mark.parametrize("solver", ["ddim", "dpmpp-2m", "unipc"])
def test_a_fractional_list_runs_with_every_solver_bitwise_batch_size_invariant(solver):
    adapter = ModelAdapter.from_diffusers(build_tiny_unet(), tiny_scheduler_config())
    plan = [999, 700.5, 420.25, 150.75, 20.5]
    one = sample(adapter, plan, TINY_SHAPE, 5, batch_size=5, seed=3, solver=make_solver(solver))
    split = sample(adapter, plan, TINY_SHAPE, 5, batch_size=2, seed=3, solver=make_solver(solver))
    assert torch.equal(one.samples, split.samples) and torch.isfinite(one.samples).all()
    rounded = sample(adapter, [999, 700, 420, 151, 20], TINY_SHAPE, 5, batch_size=5, seed=3,
                     solver=make_solver(solver))
    assert not torch.equal(one.samples, rounded.samples)
    assert one.timesteps[0] == plan


def test_a_fractional_list_with_a_monitor_and_a_tail_finish():
    from adaptive_sampler.monitors import ChangeMonitor

    adapter = ModelAdapter.from_diffusers(build_tiny_unet(), tiny_scheduler_config())
    plan = [999, 800.5, 600.5, 400.5, 200.5, 50.5]
    monitor = ChangeMonitor("l2", threshold=1e9)  # fires at its first comparison: every row finishes on its tail
    result = sample(adapter, plan, TINY_SHAPE, 4, batch_size=4, seed=1, monitor=monitor,
                    finish=Finish(steps=2, spacing="logsnr"))
    assert torch.isfinite(result.samples).all()
    for ts in result.timesteps:
        assert ts[:2] == plan[:2] and ts[-1] == 0 and all(a > b for a, b in zip(ts, ts[1:], strict=False))


def _artifact(timesteps: list[int | float], **extra: object) -> ScheduleArtifact:
    spec = NoiseScheduleSpec(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    return ScheduleArtifact(num_train_timesteps=1000, timesteps=timesteps, model=ModelIdentity(name="tiny"),
                            noise_schedule=spec, method="test", **extra)


def test_artifact_records_fractional_and_round_trips_it(tmp_path):
    art = _artifact([999, 450.5, 12.25, 0])
    assert art.fractional and _artifact([999, 450.0]).fractional is False
    path = tmp_path / "s.json"
    art.save(path)
    data = json.loads(path.read_text())
    assert data["fractional"] is True and data["timesteps"] == [999, 450.5, 12.25, 0]
    assert ScheduleArtifact.read(path).timesteps == [999, 450.5, 12.25, 0]
    data["fractional"] = False
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="fractional=False does not match the list, which is fractional"):
        ScheduleArtifact.read(path)


def test_exporters_round_for_diffusers_with_a_warning_and_keep_fractions_in_sigmas():
    art = _artifact([999, 450.5, 449.75, 0])
    with pytest.warns(UserWarning, match="timesteps: the list is fractional; diffusers' timesteps= takes integers"):
        rounded = art.to_diffusers_timesteps()
    assert rounded == [999, 451, 450, 0]
    sigmas = art.to_sigmas()
    table = SCHEDULE.sigmas()
    assert math.isclose(sigmas[0], float(table[999]), rel_tol=1e-12) and sigmas[-1] == 0.0
    assert table[450] < sigmas[1] < table[451] and table[449] < sigmas[2] < table[450]
    lam = SCHEDULE.log_snr()
    assert math.isclose(sigmas[1], math.exp(-float(lam[450] + lam[451]) / 4), rel_tol=1e-9)
    assert art.to_comfyui_sigmas().count(",") == 4
    with_ints = _artifact([999, 450, 0])
    assert with_ints.to_diffusers_timesteps() == [999, 450, 0]
    assert with_ints.to_sigmas()[:3] == [float(table[t]) for t in (999, 450, 0)]


def test_cli_samples_a_fractional_explicit_list(tmp_path):
    model = write_tiny_model_dir(tmp_path / "tiny")
    out = tmp_path / "x.npy"
    run = run_cli("sample", "--model", model, "--timesteps", "999,450.5,0.5", "--n", "2", "--out",
                  tmp_path / "g.png", "--save", out, "--json", tmp_path / "r.json")
    assert run.code == 0, run.err
    assert np.isfinite(np.load(out)).all()
    assert json.loads((tmp_path / "r.json").read_text())["timesteps"] == [999, 450.5, 0.5]
    bad = run_cli("sample", "--model", model, "--timesteps", "999,x", "--n", "2", "--out", tmp_path / "h.png")
    assert bad.code != 0 and "--timesteps" in bad.err and "is not a comma-separated list of numbers" in bad.err
