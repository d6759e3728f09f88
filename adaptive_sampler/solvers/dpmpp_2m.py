"""DPM-Solver++(2M): the multistep second-order data-prediction solver (Lu et al. 2022, "DPM-Solver++: Fast Solver
for Guided Sampling of Diffusion Probabilistic Models", arXiv:2211.01095, Algorithm 2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaptive_sampler.model_adapter import Prediction
from adaptive_sampler.solvers.base import SolverState, StepSchedule


@dataclass(frozen=True)
class NoiseLevel:
    """x_t = α_t·x0 + σ_t·ε with α_t = sqrt(ᾱ_t), σ_t = sqrt(1 - ᾱ_t); λ_t = log(α_t / σ_t) (half log-SNR)."""

    alpha: torch.Tensor
    sigma: torch.Tensor
    lam: torch.Tensor


def noise_level(alpha_bar: torch.Tensor) -> NoiseLevel:
    """α, σ, λ at ᾱ (in ᾱ's dtype and device, so no host sync); ᾱ = 1 (t = -1) gives σ = 0 and λ = +∞."""
    alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    return NoiseLevel(alpha, sigma, alpha.log() - sigma.log())


class DPMSolverPP2M:
    """DPM-Solver++(2M) over explicit (t, t_prev) pairs, deterministic, on x̂0 (`Prediction.x0`).

    Step k from s = t_k to t = t_prev with h = λ_t - λ_s:
        x_t = (σ_t/σ_s)·x_s - α_t·(e^{-h} - 1)·D,  D = x̂0_k + (x̂0_k - x̂0_{k-1}) / (2r),  r = (λ_s - λ_{k-1}) / h.
    The first step has no history and the last step (to σ = 0) is first order (D = x̂0_k, i.e. DDIM), as in
    diffusers' DPMSolverMultistepScheduler with solver_order=2 and final_sigmas_type="zero"; there the last
    step returns x̂0_k exactly. Each sample's previous x̂0 lives in `state.tensors["x0_prev"]`.
    """

    name = "dpmpp-2m"
    supports_eta = False

    def step(self, k: int, x: torch.Tensor, pred: Prediction, schedule: StepSchedule, state: SolverState,
             noise: torch.Tensor | None) -> torch.Tensor:
        s, t = noise_level(schedule.alpha_bars[k]), noise_level(schedule.alpha_bars_prev[k])
        h = t.lam - s.lam
        d = pred.x0
        if 0 < k < len(schedule.timesteps) - 1:
            r = (s.lam - noise_level(schedule.alpha_bars[k - 1]).lam) / h
            d = d + 0.5 / r * (pred.x0 - state.tensors["x0_prev"])
        state.tensors["x0_prev"] = pred.x0
        return t.sigma / s.sigma * x - t.alpha * torch.expm1(-h) * d
