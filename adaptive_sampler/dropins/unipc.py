"""The UniPC drop-in: diffusers' `UniPCMultistepScheduler` that also runs a custom (learned, possibly fractional)
timestep list, which diffusers' own takes for flow models only (diffusers issue #14442)."""

from __future__ import annotations

import functools

import torch
from diffusers import UniPCMultistepScheduler

from adaptive_sampler.dropins.list_handling import ListInput, plan_pass
from adaptive_sampler.errors import FieldError

# config keys that choose the σs themselves; a custom list cannot be combined with them
SIGMA_SPACINGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


class AdaptiveUniPCMultistepScheduler(UniPCMultistepScheduler):
    """UniPC (Zhao et al. 2023, arXiv:2302.04867) as diffusers implements it, over any timestep list.

    Every config key, the predictor and corrector, `step`, `add_noise`, `scale_model_input` (the identity) and
    `set_begin_index` are diffusers' own. Only `set_timesteps` adds a list: `timesteps=` takes integers or
    fractional training steps, and `sigmas=` takes σ_t = sqrt((1 - ᾱ_t) / ᾱ_t) (a final 0 may end it;
    `ScheduleArtifact.to_sigmas`). A fractional t gets σ = e^{-λ/2}, λ interpolated in log-SNR as the project's
    sampler does, and is passed to the network as a float. With `use_flow_sigmas=True`, `sigmas=` keeps diffusers'
    meaning (flow σs) and `timesteps=` is refused. With `solver_order=2`, `solver_type="bh2"`, `predict_x0=True`,
    `lower_order_final=True`, `final_sigmas_type="zero"` (diffusers' defaults) it steps as `make_solver("unipc")`
    does, the last step returning x̂0.

    History: the solver keeps the last `solver_order` model outputs, the sample before the last step
    (`last_sample`, which the corrector refines once the next model output is known) and a step counter
    (`step_index`). So `step` must be called once per listed timestep, in order; `set_timesteps` clears the history
    and starts a new pass. An img2img pipeline that enters the list at index k calls `set_begin_index(k)`
    (diffusers' pipelines do), and the first step from there is first order with no correction.
    """

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: ListInput | None = None,
        mu: float | None = None,
        timesteps: ListInput | None = None,
    ) -> None:
        """Plan the next pass: `num_inference_steps` spaced as diffusers spaces them, or the list `timesteps`
        (integers or fractional, strictly descending in [0, T-1]) or `sigmas` (strictly descending σ_t); one of the
        three. A list refuses the config keys that set the σs themselves (`use_karras_sigmas`, …)."""
        if self.config.use_flow_sigmas:
            if timesteps is not None:
                raise FieldError("timesteps", "a list", "cannot be used with use_flow_sigmas=True; pass flow σs as "
                                 "sigmas=[...]")
            super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas, mu=mu)
            return
        plan_pass(self, functools.partial(super().set_timesteps, device=device, mu=mu), num_inference_steps,
                  device, timesteps, sigmas, SIGMA_SPACINGS)
