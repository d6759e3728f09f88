"""UniPC: a multistep predictor-corrector on x̂0 (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework
for Fast Sampling of Diffusion Models", arXiv:2302.04867), order 2 with B(h) = e^h - 1 ("bh2")."""

from __future__ import annotations

import torch

from adaptive_sampler.solvers.base import Point, SolverState, push_history, replace_anchor
from adaptive_sampler.solvers.dpmpp_2m import noise_level, safe_ratio, second_order_rows


class UniPC:
    """UniP-2 predictor with the UniC corrector (bh2, data prediction) over per-row (t, t_prev) pairs, deterministic.

    When a row accepts a new point, its x there, which the predictor made before the network saw it, is first
    corrected with the new x̂0 (UniC; no extra network call); the predictor then steps from the corrected point
    (UniP). Orders follow diffusers' UniPCMultistepScheduler (solver_order=2, lower_order_final=True,
    final_sigmas_type="zero"), per row: the predictor is first order on a row's first step and on a step to σ = 0
    (which then returns x̂0 exactly), second order otherwise; the corrector has the order of the predictor step it
    corrects. The row's previous accepted x̂0 and ᾱ live in `state` (see `push_history`).
    """

    name = "unipc"
    supports_eta = False

    def accept(self, new: Point, anchor: Point | None, accepted: torch.Tensor, state: SolverState) -> Point:
        if anchor is not None:
            new = Point(new.t, self._correct(new, anchor, state), new.x0, new.eps, new.alpha_bar)
        push_history(anchor, accepted, state)
        return replace_anchor(new, anchor, accepted)

    def step(self, anchor: Point, alpha_bar_to: torch.Tensor, state: SolverState, eta: float,
             noise: torch.Tensor | None) -> torch.Tensor:
        s, t = noise_level(anchor.alpha_bar), noise_level(alpha_bar_to)
        h = t.lam - s.lam
        b_h = torch.expm1(-h)  # B(h) of bh2 in the data-prediction sign convention, equal to h·φ_1 here
        x_next = t.sigma / s.sigma * anchor.x - t.alpha * b_h * anchor.x0
        if "x0_prev" in state.tensors:
            rows = second_order_rows(state, alpha_bar_to)
            r = safe_ratio(rows, (noise_level(state.tensors["alpha_bar_prev"]).lam - s.lam) / h)
            # UniP-2 fixes ρ = 1/2 (the paper's simplified second-order predictor)
            second = x_next - t.alpha * b_h * 0.5 * (state.tensors["x0_prev"] - anchor.x0) / r
            x_next = torch.where(rows, second, x_next)
        return x_next

    @staticmethod
    def _correct(new: Point, anchor: Point, state: SolverState) -> torch.Tensor:
        """UniC: redo the step anchor -> new from the anchor's x, now using the new x̂0 as well."""
        p, s = noise_level(anchor.alpha_bar), noise_level(new.alpha_bar)
        m0, x0 = anchor.x0, new.x0
        hh = p.lam - s.lam  # -h: data prediction integrates in -λ
        b_h = torch.expm1(hh)
        x_c = s.sigma / p.sigma * anchor.x - s.alpha * b_h * m0
        first = x_c - s.alpha * b_h * 0.5 * (x0 - m0)
        if "x0_prev" not in state.tensors:
            return first
        has_prev = state.tensors["has_prev"].view_as(hh)
        r = safe_ratio(has_prev, (noise_level(state.tensors["alpha_bar_prev"]).lam - p.lam) / -hh)
        # ρ solves [[1, 1], [r, 1]] ρ = (b_1, b_2), b_i = i!·h·φ_{i+1}(h) / B(h) (the paper's order conditions)
        phi_2 = b_h / hh - 1
        b_1, b_2 = phi_2 / b_h, (phi_2 / hh - 0.5) * 2 / b_h
        rho_1 = (b_1 - b_2) / (1 - r)
        rho_2 = b_1 - rho_1
        second = x_c - s.alpha * b_h * (rho_1 * (state.tensors["x0_prev"] - m0) / r + rho_2 * (x0 - m0))
        return torch.where(has_prev, second, first)
