"""Learning the timesteps by backpropagating through the solver (after Tong et al., "Learning to Discretize
Denoising Diffusion ODEs", ICLR 2025).

The N timesteps are softmax increments over [t_min, T-1] (N + 1 positive gaps, so every iterate is a strictly
descending list), run through the project's own sampling loop with autograd on, and moved by a loss to a many-step
teacher from the same noise; each network call is checkpointed. The optional ball surrogate (LD3's soft objective)
lets each training sample start within a ball of radius `ball_radius`·sqrt(d) around its noise, which LD3 found to
generalise better from ~100 training noises.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.checkpoint import checkpoint

from adaptive_sampler.errors import FieldError
from adaptive_sampler.model_adapter import ModelAdapter, tensor_output
from adaptive_sampler.policies import make_policy
from adaptive_sampler.sampler import sample
from adaptive_sampler.seeding import draw_noise, sample_generator
from adaptive_sampler.solvers import make_solver

GAP_FLOOR = 1e-4  # the smallest share of the range a gap starts with (a warm start's zero gap)


class LD3Settings(BaseModel):
    """LD3's hyperparameters (the ones an Optuna study over LD3 varies: lr, ball_radius, teacher_steps, loss)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    lr: float = Field(0.05, gt=0, description="Adam learning rate on the increment logits")
    ball_radius: float = Field(0.0, ge=0, description="soft surrogate's ball radius, as a fraction of sqrt(d); 0 off")
    teacher_steps: int = Field(100, ge=2, description="steps of the DPM-Solver++(2M) teacher")
    loss: Literal["pixel", "features"] = Field("pixel", description=(
        "distance to the teacher: pixel (mean squared error) or features (embedded classifier features)"))
    iterations: int = Field(60, ge=1, description="optimiser steps")
    train_n: int = Field(100, ge=1, description="training noises")
    batch_size: int = Field(20, ge=1, description="training noises per optimiser step")
    train_seed: int = Field(2_000_000, ge=0, description="seed of the training noises (never a scoring seed)")
    t_min: float = Field(0.0, ge=0, description="the bottom of the range the steps may use")


@dataclass(frozen=True)
class LD3Result:
    """The learned list (fractional), the loss per iteration and the initial loss, and the wall time."""

    timesteps: list[float]
    losses: list[float]
    initial_loss: float
    wall_s: float


def timesteps_from_logits(logits: torch.Tensor, num_train_timesteps: int, t_min: float) -> torch.Tensor:
    """N timesteps from N + 1 logits: softmax gaps, the first above the top step, the last below the bottom one."""
    top = num_train_timesteps - 1
    shares = torch.softmax(logits, 0)
    return top - (top - t_min) * torch.cumsum(shares, 0)[:-1]


def logits_from_timesteps(timesteps: torch.Tensor, num_train_timesteps: int, t_min: float) -> torch.Tensor:
    """The logits whose list is `timesteps` (gaps below GAP_FLOOR of the range raised to it, then renormalised)."""
    top = num_train_timesteps - 1
    edges = torch.cat([torch.tensor([float(top)]), timesteps.double().cpu(), torch.tensor([float(t_min)])])
    gaps = ((edges[:-1] - edges[1:]) / (top - t_min)).clamp(min=GAP_FLOOR)
    return (gaps / gaps.sum()).log()


class _CheckpointedNetwork(torch.nn.Module):
    """The network with activation checkpointing: its activations are recomputed in the backward pass."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.inner = network

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> Any:
        return checkpoint(lambda a, b: tensor_output(self.inner(a, b, **kwargs)), x, t, use_reentrant=False)


def checkpointed(adapter: ModelAdapter) -> ModelAdapter:
    """A copy of `adapter` whose network calls are checkpointed (same rows, schedule and prediction type)."""
    if not isinstance(adapter.network, torch.nn.Module):
        return adapter
    out = copy.copy(adapter)
    out.network = _CheckpointedNetwork(adapter.network)
    return out


class LD3:
    """Learns N-step lists for one model and solver; the teacher's outputs are cached per teacher_steps."""

    def __init__(self, adapter: ModelAdapter, sample_shape: tuple[int, ...], solver: str) -> None:
        self.adapter, self.shape, self.solver = adapter, tuple(sample_shape), solver
        self._teachers: dict[tuple[int, int, int], torch.Tensor] = {}
        self._features: torch.nn.Module | None = None

    def teacher(self, settings: LD3Settings) -> torch.Tensor:
        """The teacher's samples of the training noises: many-step DPM-Solver++(2M), uniform steps."""
        key = (settings.teacher_steps, settings.train_seed, settings.train_n)
        if key not in self._teachers:
            plan = make_policy("uniform").timesteps(settings.teacher_steps, self.adapter.schedule)
            self._teachers[key] = sample(self.adapter, plan, self.shape, settings.train_n, batch_size=64,
                                         seed=settings.train_seed, solver=make_solver("dpmpp-2m")).samples
        return self._teachers[key]

    def _distance(self, student: torch.Tensor, teacher: torch.Tensor, loss: str) -> torch.Tensor:
        """Per sample: mean squared error, in pixels or in the embedded classifier's feature space."""
        if loss == "features":
            if self._features is None:
                from adaptive_sampler.metrics.features import load_embedded_feature_net

                self._features = load_embedded_feature_net().requires_grad_(False)
            net = self._features
            student, teacher = net.features(student), net.features(teacher)  # type: ignore[operator]
        return (student - teacher).pow(2).flatten(1).mean(1)

    def learn(self, init: torch.Tensor, settings: LD3Settings,
              on_iteration: Callable[[int, float], None] | None = None) -> LD3Result:
        """Learn a list with as many steps as `init` (its starting point: a warm start)."""
        start = time.perf_counter()
        T = self.adapter.schedule.num_train_timesteps
        if settings.t_min >= T - 1:
            raise FieldError("t_min", settings.t_min, f"is not below the model's last training timestep {T - 1}")
        teacher = self.teacher(settings).to(self.adapter.device)
        noise = draw_noise([sample_generator(settings.train_seed, i) for i in range(settings.train_n)], self.shape)
        logits = logits_from_timesteps(init, T, settings.t_min).requires_grad_(True)
        offsets = torch.zeros_like(noise, requires_grad=settings.ball_radius > 0)
        params = [logits, offsets] if settings.ball_radius > 0 else [logits]
        optimiser = torch.optim.Adam(params, lr=settings.lr)
        radius = settings.ball_radius * math.sqrt(noise[0].numel())
        model, solver = checkpointed(self.adapter), make_solver(self.solver)
        order = torch.Generator().manual_seed(settings.train_seed)
        losses: list[float] = []
        for iteration in range(settings.iterations):
            rows = torch.randperm(settings.train_n, generator=order)[:settings.batch_size]
            timesteps = timesteps_from_logits(logits, T, settings.t_min)
            student = sample(model, timesteps, self.shape, len(rows), batch_size=len(rows), solver=solver,
                             noise=noise[rows] + offsets[rows], grad=True).samples
            loss = self._distance(student, teacher[rows], settings.loss).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if settings.ball_radius > 0:
                with torch.no_grad():  # project each offset back onto its ball
                    norms = offsets.flatten(1).norm(dim=1).clamp(min=radius).view(-1, *([1] * len(self.shape)))
                    offsets.mul_(radius / norms)
            losses.append(loss.item())
            if on_iteration is not None:
                on_iteration(iteration, losses[-1])
        learned = timesteps_from_logits(logits.detach(), T, settings.t_min)
        return LD3Result([float(t) for t in learned], losses, losses[0], time.perf_counter() - start)


__all__ = ["LD3", "LD3Result", "LD3Settings", "checkpointed", "logits_from_timesteps", "timesteps_from_logits"]
