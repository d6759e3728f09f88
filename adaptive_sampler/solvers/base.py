"""What a solver is: the update from x_t to x_{t_prev} given the denoiser's prediction, over an explicit list."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from adaptive_sampler.model_adapter import Prediction


@dataclass(frozen=True)
class StepSchedule:
    """The run's explicit (t, t_prev) pairs and their ᾱ values (t_prev = -1 has ᾱ = 1), on the sampling device."""

    timesteps: torch.Tensor
    t_prevs: torch.Tensor
    alpha_bars: torch.Tensor
    alpha_bars_prev: torch.Tensor
    eta: float


@dataclass
class SolverState:
    """Per-sample history a multistep solver carries between steps, row-aligned with the active samples.

    When samples leave the batch, `keep` drops their rows so every remaining sample keeps its own history.
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def keep(self, rows: torch.Tensor) -> None:
        self.tensors = {name: value[rows] for name, value in self.tensors.items()}


class Solver(Protocol):
    """One sampling algorithm. `step` returns x at t_prev of step k; `noise` is given only when η > 0."""

    name: str
    supports_eta: bool

    def step(self, k: int, x: torch.Tensor, pred: Prediction, schedule: StepSchedule, state: SolverState,
             noise: torch.Tensor | None) -> torch.Tensor: ...
