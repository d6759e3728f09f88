"""A diffusers drop-in DDIM scheduler that walks its own (possibly learned) timestep list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from adaptive_sampler.errors import FieldError
from adaptive_sampler.model_adapter import PREDICTION_TYPES, X0Processing, eps_and_x0
from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.policies.base import Policy
from adaptive_sampler.policies.builtin import Leading, Trailing, Uniform
from adaptive_sampler.solvers.ddim import ddim_step
from adaptive_sampler.timesteps import validate_timesteps

_SPACINGS = ("linspace", "leading", "trailing")


class AdaptiveDDIMScheduler(SchedulerMixin, ConfigMixin):
    """DDIM (Song, Meng & Ermon 2021, eq. 12 and 16) over an explicit timestep list, as a diffusers scheduler.

    It takes every `DDIMScheduler` config key with the same defaults and meaning, so
    `AdaptiveDDIMScheduler.from_config(pipe.scheduler.config)` works for any DDIM-compatible config, plus
    `custom_timesteps`: a list that `set_timesteps()` runs when given no other, and that `save_pretrained` keeps
    (diffusers' own schedulers drop custom lists on save).

    The previous timestep of each step is the next entry of the scheduler's own list (after the last, ᾱ = 1 with
    `set_alpha_to_one`, else ᾱ_0), never `t - T // N`. With `leading` and `trailing` spacing that is what
    `DDIMScheduler` does, and the two agree. With `linspace` spacing `DDIMScheduler.step` assumes a stride of T // N
    that its own list does not have (diffusers issue #12633), so this scheduler deliberately differs there and
    follows its list.

    As in diffusers' multistep schedulers, the step index is found from the timestep on the first `step` after
    `set_timesteps` (or set by `set_begin_index`, for img2img) and then advances by one per call; the per-step ᾱ
    come from the list, not from the `timestep` argument.

    Zero-terminal-SNR configs (`rescale_betas_zero_snr=True`) use ᾱ_{T-1} = 2**-24 (see `NoiseSchedule`), where
    `DDIMScheduler` uses 0 and so returns NaN for ε-prediction at t = T-1.

    `diffusers.DDIMPipeline.__init__` converts any scheduler to `DDIMScheduler`; to use this one there, assign it
    after construction: `pipe.scheduler = AdaptiveDDIMScheduler.from_config(pipe.scheduler.config,
    custom_timesteps=[...])`. Pipelines with a `timesteps=` argument (e.g. `StableDiffusionPipeline`) take it as is.
    """

    _compatibles = list(DDIMScheduler._compatibles)
    order = 1

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
            listed = validate_timesteps(custom_timesteps, num_train_timesteps, "custom_timesteps")
            # plain ints, so that save_pretrained writes the list to JSON whatever type it came in
            self.register_to_config(custom_timesteps=listed.tolist())
        X0Processing.from_config(self.config)  # validates the clip/threshold settings now, not at the first step
        self.schedule = NoiseSchedule.from_config(self.config)
        self.alphas_cumprod = self.schedule.alphas_cumprod
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)
        self._step_index: int | None = None
        self._begin_index: int | None = None

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    @property
    def step_index(self) -> int | None:
        """Index into `timesteps` of the next `step`; None until the first step after `set_timesteps`."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """Index of the first step, when a pipeline starts mid-list (img2img); None to find it from the timestep."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the next pass at `timesteps[begin_index]` (diffusers' img2img pipelines call this)."""
        self._begin_index = begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep: int | torch.Tensor | None = None) -> torch.Tensor:
        """DDIM feeds x_t to the network unscaled."""
        return sample

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
        if timesteps is not None:
            if num_inference_steps is not None:
                raise ValueError(
                    f"num_inference_steps, timesteps: both are given ({num_inference_steps} and a list of "
                    f"{len(timesteps)}); give one: a timestep list sets its own step count"
                )
            planned = validate_timesteps(timesteps, T, "timesteps")
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

        # Settings are read here rather than in __init__: StableDiffusionPipeline.__init__ rewrites the config of
        # the scheduler it is given (clip_sample, steps_offset) after construction.
        final = torch.tensor(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]
        t_prev = torch.cat([planned[1:], planned.new_full((1,), -1)])
        self._alpha_bars = self.alphas_cumprod[planned]
        self._alpha_bars_prev = torch.where(t_prev >= 0, self.alphas_cumprod[t_prev.clamp(min=0)], final)
        self._x0_processing = X0Processing.from_config(self.config)
        self.num_inference_steps = len(planned)
        self.timesteps = planned.to(device)
        self._step_index = None
        self._begin_index = None

    def _init_step_index(self, timestep: int | torch.Tensor) -> int:
        """Set and return the index of `timestep` in this pass (the pipeline's begin index if it set one)."""
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return self._begin_index
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.to(self.timesteps.device)
        matches = (self.timesteps == timestep).nonzero()
        if len(matches) == 0:
            raise FieldError(
                "timestep", int(timestep), f"is not in this scheduler's timesteps {self.timesteps.tolist()}; "
                "step through scheduler.timesteps, or run set_timesteps with the list you mean"
            )
        index = int(matches[0])
        self._step_index = index
        return index

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
        """One DDIM step from `timestep` to the next entry of the list: x_{t_prev} = sqrt(ᾱ_prev)·x̂0
        + sqrt(1 - ᾱ_prev - σ²)·ε̂ + σ·z, with σ = η·(DDPM posterior std).

        Arguments mean what they mean in `DDIMScheduler.step`: x̂0 and ε̂ come from `model_output` by
        `config.prediction_type`, x̂0 is clipped or thresholded by the config, `use_clipped_model_output` re-derives
        ε̂ from that x̂0, and for η > 0 z is `variance_noise`, else drawn with `generator`.
        """
        steps = self.num_inference_steps
        if steps is None:
            raise ValueError("timesteps are not set: run set_timesteps first")
        k = self._step_index if self._step_index is not None else self._init_step_index(timestep)
        if k >= steps:
            raise ValueError(
                f"step: all {steps} timesteps of this pass are done; run set_timesteps again "
                "before the next pass"
            )
        a_t, a_prev = self._alpha_bars[k], self._alpha_bars_prev[k]

        eps, x0 = eps_and_x0(model_output, sample, a_t, self.config.prediction_type)
        x0 = self._x0_processing(x0)
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
        self._step_index = k + 1

        if not return_dict:
            return prev_sample, x0
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor
    ) -> torch.Tensor:
        """Forward process q(x_t | x_0): sqrt(ᾱ_t)·x_0 + sqrt(1 - ᾱ_t)·noise, one t per sample or one for all."""
        a = self.alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)
        a = a[timesteps.to(original_samples.device)].flatten()
        a = a.view(-1, *([1] * (original_samples.ndim - 1)))
        return a.sqrt() * original_samples + (1 - a).sqrt() * noise
