"""The DDIM update (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", eq. 12 and 16)."""

from __future__ import annotations

import torch

from adaptive_sampler.model_adapter import Prediction
from adaptive_sampler.solvers.base import SolverState, StepSchedule


def ddim_sigma(alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """σ_t(η) = η · sqrt((1 - ᾱ_prev) / (1 - ᾱ_t)) · sqrt(1 - ᾱ_t / ᾱ_prev); η = 1 is the DDPM posterior std."""
    return eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)).sqrt()


def ddim_step(
    x0: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar_t: torch.Tensor,
    alpha_bar_prev: torch.Tensor,
    eta: float,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """x_{t_prev} = sqrt(ᾱ_prev)·x̂0 + sqrt(1 - ᾱ_prev - σ²)·ε̂ + σ·z.

    ᾱ arguments broadcast against x (a scalar or one value per row). `noise` may be None when η = 0.
    """
    sigma = ddim_sigma(alpha_bar_t, alpha_bar_prev, eta)
    x_prev = alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev - sigma**2).sqrt() * eps
    if eta > 0:
        if noise is None:
            raise ValueError(f"noise: None is not allowed when eta={eta} > 0; DDIM with η > 0 needs fresh noise")
        x_prev = x_prev + sigma * noise
    return x_prev


class DDIM:
    """DDIM with η ∈ [0, 1] over explicit (t, t_prev) pairs; single-step, so it keeps no history."""

    name = "ddim"
    supports_eta = True

    def step(self, k: int, x: torch.Tensor, pred: Prediction, schedule: StepSchedule, state: SolverState,
             noise: torch.Tensor | None) -> torch.Tensor:
        return ddim_step(pred.x0, pred.eps, schedule.alpha_bars[k], schedule.alpha_bars_prev[k], schedule.eta, noise)
