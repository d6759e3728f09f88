"""DPM-Solver++(2M): the multistep second-order data-prediction solver (Lu et al. 2022, "DPM-Solver++: Fast Solver
for Guided Sampling of Diffusion Probabilistic Models", arXiv:2211.01095, Algorithm 2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaptive_sampler.solvers.base import Point, SolverState, push_history, replace_anchor


@dataclass(frozen=True)
class NoiseLevel:
    """x_t = α_t·x0 + σ_t·ε with α_t = sqrt(ᾱ_t), σ_t = sqrt(1 - ᾱ_t); λ_t = log(α_t / σ_t) (half log-SNR)."""

    alpha: torch.Tensor
    sigma: torch.Tensor
    lam: torch.Tensor


def noise_level(alpha_bar: torch.Tensor) -> NoiseLevel:
    """α, σ, λ at ᾱ per row (in ᾱ's dtype and device, so no host sync); ᾱ = 1 (t = -1) gives σ = 0, λ = +∞."""
    alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    return NoiseLevel(alpha, sigma, alpha.log() - sigma.log())


def second_order_rows(state: SolverState, alpha_bar_to: torch.Tensor) -> torch.Tensor:
    """Rows whose step may be second order: they have a previous point (`has_prev`) and do not end at σ = 0."""
    return state.tensors["has_prev"].view_as(alpha_bar_to) & (alpha_bar_to < 1)


def safe_ratio(rows: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """The step-size ratio r on the second-order `rows`, 1 elsewhere: those rows discard the second-order term,
    and a 0 there (a step to σ = 0 has h = ∞) would turn a learned schedule's gradients into NaN through 1/r."""
    return torch.where(rows, r, torch.ones_like(r))


class DPMSolverPP2M:
    """DPM-Solver++(2M) over per-row (t, t_prev) pairs, deterministic, on x̂0.

    A step from the anchor s to t with h = λ_t - λ_s:
        x_t = (σ_t/σ_s)·x_s - α_t·(e^{-h} - 1)·D,  D = x̂0_s + (x̂0_s - x̂0_p) / (2r),  r = (λ_s - λ_p) / h,
    p being the row's previous accepted point. A row's first step has no p and a step to σ = 0 is first order
    (D = x̂0_s, i.e. DDIM), as in diffusers' DPMSolverMultistepScheduler with solver_order=2 and
    final_sigmas_type="zero"; there the last step returns x̂0_s exactly. The order is decided per row.
    """

    name = "dpmpp-2m"
    supports_eta = False

    def accept(self, new: Point, anchor: Point | None, accepted: torch.Tensor, state: SolverState) -> Point:
        push_history(anchor, accepted, state)
        return replace_anchor(new, anchor, accepted)

    def step(self, anchor: Point, alpha_bar_to: torch.Tensor, state: SolverState, eta: float,
             noise: torch.Tensor | None) -> torch.Tensor:
        s, t = noise_level(anchor.alpha_bar), noise_level(alpha_bar_to)
        h = t.lam - s.lam
        d = anchor.x0
        if "x0_prev" in state.tensors:
            rows = second_order_rows(state, alpha_bar_to)
            r = safe_ratio(rows, (s.lam - noise_level(state.tensors["alpha_bar_prev"]).lam) / h)
            second = d + 0.5 / r * (anchor.x0 - state.tensors["x0_prev"])
            d = torch.where(rows, second, d)
        return t.sigma / s.sigma * anchor.x - t.alpha * torch.expm1(-h) * d
