"""The DDIM update (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", eq. 12 and 16)."""

from __future__ import annotations

import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.solvers.base import Point, SolverState, replace_anchor


def ddim_sigma(alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """σ_t(η) = η · sqrt((1 - ᾱ_prev) / (1 - ᾱ_t)) · sqrt(1 - ᾱ_t / ᾱ_prev); η = 1 is the DDPM posterior std.

    Args:
        alpha_bar_t: ᾱ at the step's start.
        alpha_bar_prev: ᾱ at its end.
        eta: η in [0, 1].
    """
    if eta == 0:  # exactly 0, and no sqrt(0) on the way: its infinite slope would make gradients in t NaN
        return torch.zeros_like(alpha_bar_t)
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

    Args:
        x0: x̂0 at t.
        eps: ε̂ at t.
        alpha_bar_t: ᾱ_t, broadcast against x (a scalar or one value per row).
        alpha_bar_prev: ᾱ_{t_prev}, likewise.
        eta: η in [0, 1].
        noise: z, needed when η > 0 (else None).
    """
    sigma = ddim_sigma(alpha_bar_t, alpha_bar_prev, eta)
    x_prev = alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev - sigma**2).sqrt() * eps
    if eta > 0:
        if noise is None:
            raise FieldError("noise", None, f"is not allowed when eta={eta} > 0; DDIM with η > 0 needs fresh noise")
        x_prev = x_prev + sigma * noise
    return x_prev


class DDIM:
    """DDIM with η ∈ [0, 1] over per-row (t, t_prev) pairs; single-step, so it keeps no history."""

    name = "ddim"
    supports_eta = True

    def accept(self, new: Point, anchor: Point | None, accepted: torch.Tensor, state: SolverState) -> Point:
        return replace_anchor(new, anchor, accepted)

    def step(self, anchor: Point, alpha_bar_to: torch.Tensor, state: SolverState, eta: float,
             noise: torch.Tensor | None) -> torch.Tensor:
        return ddim_step(anchor.x0, anchor.eps, anchor.alpha_bar, alpha_bar_to, eta, noise)
