"""The DDIM drop-in: a diffusers scheduler that walks its own (possibly learned) integer timestep list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from adaptive_sampler.dropins.list_handling import custom_list
from adaptive_sampler.errors import FieldError
from adaptive_sampler.model_adapter import PREDICTION_TYPES, eps_and_x0
from adaptive_sampler.noise_schedule import BETA_KEYS, NoiseSchedule
from adaptive_sampler.policies.base import Policy
from adaptive_sampler.policies.builtin import Leading, Trailing, Uniform
from adaptive_sampler.solvers.ddim import ddim_step
from adaptive_sampler.timesteps import validate_timesteps

_SPACINGS = ("linspace", "leading", "trailing")


def _check_x0_settings(config: Any) -> None:
    """The clip/threshold settings that `step` will use; unused ones are not checked (as in DDIMScheduler)."""
    if config.thresholding:
        if not 0 < config.dynamic_thresholding_ratio < 1:
            raise FieldError("dynamic_thresholding_ratio", config.dynamic_thresholding_ratio,
                             "is outside (0, 1); it is the quantile of |x̂0| that thresholding scales by")
        if not config.sample_max_value > 0:
            raise FieldError("sample_max_value", config.sample_max_value,
                             "must be > 0 with thresholding=True; it caps the threshold s that x̂0 is divided by")
    elif config.clip_sample and not config.clip_sample_range > 0:
        raise FieldError("clip_sample_range", config.clip_sample_range, "must be > 0 with clip_sample=True")


class AdaptiveDDIMScheduler(SchedulerMixin, ConfigMixin):
    """DDIM (Song, Meng & Ermon 2021, eq. 12 and 16) over an explicit timestep list, as a diffusers scheduler.

    It takes every `DDIMScheduler` config key with the same defaults and meaning, plus `custom_timesteps`: a list
    that `set_timesteps()` runs when given no other, and that `save_pretrained` keeps. It passes diffusers' own DDIM
    scheduler test suite (tests/diffusers_vendored).

    `step` is stateless: it steps from t to the next entry below t in the scheduler's own list, or past the last
    entry to the final ᾱ; never to `t - T // N`, so with `linspace` spacing it follows its list where
    `DDIMScheduler` does not (diffusers issue #12633). Zero-terminal-SNR configs use ᾱ_{T-1} = 2**-24 (see
    `NoiseSchedule`) where `DDIMScheduler` uses 0 and returns NaN. `DDIMPipeline.__init__` converts any scheduler
    to `DDIMScheduler`: assign this one after construction (docs/guides/schedule-files.md).
    """

    _compatibles = list(DDIMScheduler._compatibles)
    order = 1

    # diffusers' own code, unchanged: these read only the tables below and the config
    scale_model_input = DDIMScheduler.scale_model_input
    add_noise = DDIMScheduler.add_noise
    get_velocity = DDIMScheduler.get_velocity
    _get_variance = DDIMScheduler._get_variance
    _threshold_sample = DDIMScheduler._threshold_sample

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading",
        rescale_betas_zero_snr: bool = False,
        custom_timesteps: list[int] | None = None,
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise FieldError("prediction_type", prediction_type,
                             f"is not one of {', '.join(map(repr, PREDICTION_TYPES))}")
        if timestep_spacing not in _SPACINGS:
            raise FieldError("timestep_spacing", timestep_spacing, f"is not one of {', '.join(_SPACINGS)}")
        if custom_timesteps is not None:
            listed = validate_timesteps(custom_timesteps, num_train_timesteps, "custom_timesteps", integers=True)
            # plain ints, so that save_pretrained writes the list to JSON whatever type it came in
            self.register_to_config(custom_timesteps=listed.tolist())
        _check_x0_settings(self.config)  # now, not at the first step
        diffusers_ddim = DDIMScheduler(**{k: self.config[k] for k in BETA_KEYS})
        self.betas, self.alphas = diffusers_ddim.betas, diffusers_ddim.alphas
        self.schedule = NoiseSchedule.from_config(self.config)
        self.alphas_cumprod = self.schedule.alphas_cumprod
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)
        self._listed: list[int] = []  # the planned list on the CPU, for `previous_timestep`

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    @property
    def final_alpha_cumprod(self) -> torch.Tensor:
        """ᾱ after the last listed step: 1 with `set_alpha_to_one`, else ᾱ_0 (read at each step, as the config is)."""
        return torch.tensor(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | torch.Tensor | None = None,
    ) -> None:
        """Plan the steps of the next pass (run before inference).

        `timesteps` runs that list (strictly descending integers in [0, T-1]); else `config.custom_timesteps` runs,
        if set (then `num_inference_steps` must be None or its length); else `num_inference_steps` steps spaced by
        `config.timestep_spacing` exactly as `DDIMScheduler` spaces them. Give at most one of the two arguments.
        """
        T = self.config.num_train_timesteps
        custom = self.config.custom_timesteps
        listed = custom_list(T, num_inference_steps, timesteps, integers=True)
        if listed is not None:
            planned = listed
        elif custom is not None:
            if num_inference_steps is not None and num_inference_steps != len(custom):
                raise FieldError(
                    "num_inference_steps", num_inference_steps, f"differs from the {len(custom)} entries of "
                    f"config.custom_timesteps; pass num_inference_steps={len(custom)} (or None) to run that list, "
                    "or timesteps=[...] to run another"
                )
            planned = torch.tensor(custom, dtype=torch.int64)
        elif num_inference_steps is None:
            raise FieldError("num_inference_steps", None, "needs timesteps=[...] or config.custom_timesteps; give a "
                             "step count or a list")
        else:
            if not 1 <= num_inference_steps <= T:
                raise FieldError("num_inference_steps", num_inference_steps,
                                 f"is outside [1, {T}] (num_train_timesteps={T})")
            spacing = self.config.timestep_spacing
            policy: dict[str, Policy] = {"linspace": Uniform(), "leading": Leading(self.config.steps_offset),
                                         "trailing": Trailing()}
            if spacing not in policy:
                raise FieldError("timestep_spacing", spacing, f"is not one of {', '.join(_SPACINGS)}")
            planned = policy[spacing].timesteps(num_inference_steps, self.schedule)
        self._listed = planned.tolist()
        self.num_inference_steps = len(planned)
        self.timesteps = planned.to(device)

    def previous_timestep(self, timestep: int | torch.Tensor) -> int:
        """The timestep that `step` goes to from `timestep`: the next entry below it in this scheduler's list, or -1
        (the final ᾱ) below the last entry."""
        t = self._training_step(timestep)
        return next((s for s in self._listed if s < t), -1)

    def _training_step(self, timestep: int | float | torch.Tensor) -> int:
        """`timestep` as an int in [0, T-1], or a FieldError that says what is wrong with it."""
        if isinstance(timestep, torch.Tensor) and timestep.numel() != 1:
            raise FieldError("timestep", tuple(timestep.shape), "is the shape of a tensor with more than one value; "
                             "step takes one timestep for the whole batch")
        value = timestep.item() if isinstance(timestep, (torch.Tensor, np.generic)) else timestep
        T = self.config.num_train_timesteps
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise FieldError("timestep", value, "is not an integer; this scheduler indexes ᾱ by integer timesteps")
        if not 0 <= value < T:
            raise FieldError("timestep", int(value), f"is outside [0, {T - 1}] (num_train_timesteps={T})")
        return int(value)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step from `timestep` to `previous_timestep(timestep)`: x_{t_prev} = sqrt(ᾱ_prev)·x̂0
        + sqrt(1 - ᾱ_prev - σ²)·ε̂ + σ·z, with σ = η·(DDPM posterior std).

        Arguments mean what they mean in `DDIMScheduler.step`: x̂0 and ε̂ come from `model_output` by
        `config.prediction_type`, x̂0 is thresholded or clipped by the config (read here: `StableDiffusionPipeline`
        rewrites `clip_sample` after construction), `use_clipped_model_output` re-derives ε̂ from that x̂0, and for
        η > 0 z is `variance_noise`, else drawn with `generator`.
        """
        if self.num_inference_steps is None:
            raise ValueError("timesteps are not set: run set_timesteps first")
        t = self._training_step(timestep)
        t_prev = self.previous_timestep(t)
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[t_prev] if t_prev >= 0 else self.final_alpha_cumprod

        eps, x0 = eps_and_x0(model_output, sample, a_t, self.config.prediction_type)
        if self.config.thresholding:
            x0 = self._threshold_sample(x0)
        elif self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        if use_clipped_model_output:
            eps = (sample - a_t.sqrt() * x0) / (1 - a_t).sqrt()

        noise = None
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("generator, variance_noise: both are given; pass one source of the step noise")
            noise = variance_noise if variance_noise is not None else randn_tensor(
                model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
            )
        prev_sample = ddim_step(x0, eps, a_t, a_prev, eta, noise)

        if not return_dict:
            return prev_sample, x0
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
