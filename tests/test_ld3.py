"""LD3-style timestep learning: the parameterisation, gradients through the one loop, and a learning run."""

from __future__ import annotations

import pytest
import torch

from adaptive_sampler import ModelAdapter, sample
from adaptive_sampler.errors import FieldError
from adaptive_sampler.solvers import make_solver
from adaptive_sampler.timesteps import check_timesteps
from adaptive_sampler.tuning.ld3 import LD3, LD3Settings, checkpointed, logits_from_timesteps, timesteps_from_logits
from helpers import TINY_SHAPE, build_tiny_unet, tiny_scheduler_config

CONFIG = {**tiny_scheduler_config(), "clip_sample": False}  # clipping would cut the gradient where it clips


def _adapter() -> ModelAdapter:
    return ModelAdapter.from_diffusers(build_tiny_unet(), CONFIG)


def test_logits_round_trip_a_list_and_always_decode_to_a_valid_one():
    ts = torch.tensor([990.0, 700.5, 300.0, 20.25])
    assert torch.allclose(timesteps_from_logits(logits_from_timesteps(ts, 1000, 0.0), 1000, 0.0),
                          ts.double(), atol=1e-9)
    for seed in range(5):
        logits = torch.randn(7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
        decoded = timesteps_from_logits(logits, 1000, 5.0)
        check_timesteps(decoded, 1000)
        assert decoded.min() > 5.0


@pytest.mark.parametrize("solver", ["ddim", "dpmpp-2m", "unipc"])
def test_the_gradient_in_a_fractional_timestep_matches_a_finite_difference(solver):
    adapter = _adapter()

    def loss(t1: torch.Tensor) -> torch.Tensor:
        plan = torch.cat([torch.tensor([999.0], dtype=torch.float64), t1.view(1),
                          torch.tensor([250.0, 40.0], dtype=torch.float64)])
        out = sample(adapter, plan, TINY_SHAPE, 3, batch_size=3, seed=5, solver=make_solver(solver), grad=True)
        return out.samples.double().pow(2).sum()

    t1 = torch.tensor(600.3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(t1), t1)
    h = 0.2  # stays inside [600, 601], where λ is linear in t
    with torch.no_grad():
        fd = (loss(torch.tensor(600.5, dtype=torch.float64)) - loss(torch.tensor(600.1, dtype=torch.float64))) / (2 * h)
    assert torch.isfinite(grad) and grad != 0
    assert float(grad) == pytest.approx(float(fd), rel=2e-2)


def test_checkpointing_changes_nothing_in_the_forward_pass():
    adapter = _adapter()
    plan = [999, 600.5, 200.25]
    plain = sample(adapter, plan, TINY_SHAPE, 4, batch_size=4, seed=1, solver=make_solver("dpmpp-2m"))
    again = sample(checkpointed(adapter), plan, TINY_SHAPE, 4, batch_size=4, seed=1, solver=make_solver("dpmpp-2m"))
    assert torch.equal(plain.samples, again.samples)
    assert not plain.samples.requires_grad


@pytest.mark.parametrize("ball_radius", [0.0, 0.05])
def test_learning_lowers_the_loss_to_the_teacher_and_is_reproducible(ball_radius):
    ld3 = LD3(_adapter(), TINY_SHAPE, "ddim")
    settings = LD3Settings(iterations=12, train_n=8, batch_size=8, teacher_steps=40, lr=0.1, ball_radius=ball_radius)
    init = torch.tensor([999, 750, 500, 250, 0])
    first = ld3.learn(init, settings)
    second = ld3.learn(init, settings)
    assert first.timesteps == second.timesteps and first.losses == second.losses
    check_timesteps(first.timesteps, 1000)
    assert len(first.timesteps) == 5 and first.timesteps != [999, 750, 500, 250, 0]
    assert min(first.losses[-3:]) < 0.8 * first.initial_loss


def test_t_min_must_lie_below_the_top():
    with pytest.raises(FieldError, match=r"^t_min: 999.0 is not below the model's last training timestep 999"):
        LD3(_adapter(), TINY_SHAPE, "ddim").learn(torch.tensor([999, 0]), LD3Settings(t_min=999, iterations=1,
                                                                                       train_n=2, teacher_steps=2))
