"""The DPM-Solver++(2M) drop-in: diffusers' `DPMSolverMultistepScheduler` that also runs a custom (learned,
possibly fractional) timestep list."""

from __future__ import annotations

import functools

import torch
from diffusers import DPMSolverMultistepScheduler

from adaptive_sampler.dropins.list_handling import ListInput, plan_pass

# config keys that choose the σs themselves; a custom list cannot be combined with them
SIGMA_SPACINGS = ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas",
                  "use_flow_sigmas")


class AdaptiveDPMSolverMultistepScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver++ (Lu et al. 2022, arXiv:2211.01095) as diffusers implements it, over any timestep list.

    Every config key, the update rules, `step`, `add_noise`, `scale_model_input` (the identity) and
    `set_begin_index` are diffusers' own. Only `set_timesteps` adds a list: `timesteps=` takes integers, as
    diffusers does (giving the same σs), and also fractional training steps, and `sigmas=` takes σ_t =
    sqrt((1 - ᾱ_t) / ᾱ_t) (a final 0 may end it; `ScheduleArtifact.to_sigmas`). A fractional t gets σ = e^{-λ/2},
    λ interpolated in log-SNR as the project's sampler does, and is passed to the network as a float. With
    `algorithm_type="dpmsolver++"`, `solver_order=2`, `final_sigmas_type="zero"` (diffusers' defaults) it steps as
    `make_solver("dpmpp-2m")` does, the last step returning x̂0.

    History: the solver keeps the last `solver_order` model outputs (`model_outputs`, `lower_order_nums`) and
    counts its steps (`step_index`). So `step` must be called once per listed timestep, in order; `set_timesteps`
    clears the history and starts a new pass. An img2img pipeline that enters the list at index k calls
    `set_begin_index(k)` (diffusers' pipelines do), and the first step from there is first order.
    """

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        mu: float | None = None,
        timesteps: ListInput | None = None,
        sigmas: ListInput | None = None,
    ) -> None:
        """Plan the next pass: `num_inference_steps` spaced as diffusers spaces them, or the list `timesteps`
        (integers or fractional, strictly descending in [0, T-1]) or `sigmas` (strictly descending σ_t); one of the
        three. A list refuses the config keys that set the σs themselves (`use_karras_sigmas`, …)."""
        plan_pass(self, functools.partial(super().set_timesteps, device=device, mu=mu), num_inference_steps,
                  device, timesteps, sigmas, SIGMA_SPACINGS)
