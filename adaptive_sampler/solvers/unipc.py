"""UniPC: a multistep predictor-corrector on x̂0 (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework
for Fast Sampling of Diffusion Models", arXiv:2302.04867), order 2 with B(h) = e^h - 1 ("bh2")."""

from __future__ import annotations

import torch

from adaptive_sampler.model_adapter import Prediction
from adaptive_sampler.solvers.base import SolverState, StepSchedule
from adaptive_sampler.solvers.dpmpp_2m import noise_level


class UniPC:
    """UniP-2 predictor with the UniC corrector (bh2, data prediction) over explicit (t, t_prev) pairs, deterministic.

    Step k first corrects x_k, which the predictor made before the network saw it, with the new x̂0_k (UniC; no
    extra network call), then predicts x at t_prev from the corrected x_k (UniP). Orders follow diffusers'
    UniPCMultistepScheduler (solver_order=2, lower_order_final=True, final_sigmas_type="zero"): the predictor is
    first order on the first step and on the last step (which then returns x̂0 exactly), second order otherwise; the
    corrector at step k has the order of the predictor at step k - 1. Each sample's corrected x_{k-1}, x̂0_{k-1} and
    x̂0_{k-2} live in `state.tensors` ("x", "x0", "x0_prev").
    """

    name = "unipc"
    supports_eta = False

    def step(self, k: int, x: torch.Tensor, pred: Prediction, schedule: StepSchedule, state: SolverState,
             noise: torch.Tensor | None) -> torch.Tensor:
        s = noise_level(schedule.alpha_bars[k])
        if k > 0:
            x = self._correct(k, pred.x0, schedule, state)
        t = noise_level(schedule.alpha_bars_prev[k])
        h = t.lam - s.lam
        b_h = torch.expm1(-h)  # B(h) of bh2 in the data-prediction sign convention, equal to h·φ_1 here
        x_next = t.sigma / s.sigma * x - t.alpha * b_h * pred.x0
        if 0 < k < len(schedule.timesteps) - 1:
            r = (noise_level(schedule.alpha_bars[k - 1]).lam - s.lam) / h
            # UniP-2 fixes ρ = 1/2 (the paper's simplified second-order predictor)
            x_next = x_next - t.alpha * b_h * 0.5 * (state.tensors["x0"] - pred.x0) / r
        history = {"x0_prev": state.tensors["x0"]} if k > 0 else {}
        state.tensors = {"x": x, "x0": pred.x0, **history}
        return x_next

    @staticmethod
    def _correct(k: int, x0: torch.Tensor, schedule: StepSchedule, state: SolverState) -> torch.Tensor:
        """UniC: redo the step k-1 -> k from the stored x_{k-1}, now using x̂0_k as well."""
        p, s = noise_level(schedule.alpha_bars[k - 1]), noise_level(schedule.alpha_bars[k])
        m0 = state.tensors["x0"]
        hh = p.lam - s.lam  # -h: data prediction integrates in -λ
        b_h = torch.expm1(hh)
        x_c = s.sigma / p.sigma * state.tensors["x"] - s.alpha * b_h * m0
        if k == 1:
            return x_c - s.alpha * b_h * 0.5 * (x0 - m0)
        r = (noise_level(schedule.alpha_bars[k - 2]).lam - p.lam) / -hh
        # ρ solves [[1, 1], [r, 1]] ρ = (b_1, b_2), b_i = i!·h·φ_{i+1}(h) / B(h) (the paper's order conditions)
        phi_2 = b_h / hh - 1
        b_1, b_2 = phi_2 / b_h, (phi_2 / hh - 0.5) * 2 / b_h
        rho_1 = (b_1 - b_2) / (1 - r)
        rho_2 = b_1 - rho_1
        return x_c - s.alpha * b_h * (rho_1 * (state.tensors["x0_prev"] - m0) / r + rho_2 * (x0 - m0))
