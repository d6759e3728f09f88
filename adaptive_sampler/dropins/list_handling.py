"""The custom timestep list of the diffusers drop-ins, in one place: which argument gives it, the rule it obeys,
and (for the σ-stepping multistep solvers) the σ table it becomes.

A list comes as `timesteps=` (integers, or fractional training steps where the drop-in can use them) or as
`sigmas=` (σ_t = sqrt((1 - ᾱ_t) / ᾱ_t), optionally ending in the final 0, as `ScheduleArtifact.to_sigmas` writes
them). Either is checked by `validate_timesteps`; a bad one raises a FieldError naming the argument.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.timesteps import validate_timesteps

ListInput = Sequence[int | float] | torch.Tensor | np.ndarray

# a σ within this relative distance of the table's ends is inside it (float32 rounding of σ)
_SIGMA_RTOL = 1e-6
# a t that lands this close to a training step is that step (float32 σs of an integer list map back within ~1e-4)
_SNAP = 1e-3


def custom_list(
    num_train_timesteps: int, num_inference_steps: int | None, timesteps: ListInput | None,
    sigmas: ListInput | None = None, schedule: NoiseSchedule | None = None, *, integers: bool = False,
) -> torch.Tensor | None:
    """The checked list that `set_timesteps` was given (int64, or float64 if fractional), or None when it was given
    a step count only (the drop-in then spaces its steps as its diffusers parent does).

    At most one of `num_inference_steps`, `timesteps` and `sigmas`: a list sets its own step count. `sigmas` needs
    the model's `schedule` (σ -> t inverts its log-SNR interpolation, so a fractional list survives the round trip).
    `integers` refuses fractional timesteps, for drop-ins that index a table by t.
    """
    given = [name for name, value in (("num_inference_steps", num_inference_steps), ("timesteps", timesteps),
                                      ("sigmas", sigmas)) if value is not None]
    if len(given) > 1:
        raise ValueError(f"{', '.join(given)}: both are given; give one: a timestep list sets its own step count")
    if timesteps is not None:
        return validate_timesteps(timesteps, num_train_timesteps, "timesteps", integers=integers)
    if sigmas is not None:
        if schedule is None:
            raise FieldError("sigmas", "a list", "needs the model's noise schedule to map σ to timesteps")
        return validate_timesteps(timesteps_of_sigmas(sigmas, schedule), num_train_timesteps, "sigmas",
                                  integers=integers)
    return None


def timesteps_of_sigmas(sigmas: ListInput, schedule: NoiseSchedule) -> list[int | float]:
    """The training steps whose σ are `sigmas` (a trailing 0, the end of the chain, is dropped); t is interpolated
    in log-SNR, exactly inverting `NoiseSchedule.log_snr_at`, and snapped to a whole step within 1e-3 (float32 σs
    of an integer list map back to it)."""
    values = [float(v) for v in (sigmas.tolist() if hasattr(sigmas, "tolist") else sigmas)]
    if len(values) > 1 and values[-1] == 0:
        values = values[:-1]
    table = schedule.sigmas().numpy()
    for i, s in enumerate(values):
        if not np.isfinite(s) or not table[0] * (1 - _SIGMA_RTOL) <= s <= table[-1] * (1 + _SIGMA_RTOL):
            raise FieldError(f"sigmas[{i}]", s, f"is outside [{table[0]:.6g}, {table[-1]:.6g}], the σ of training "
                             "steps 0 … T-1 (only the last σ may be 0)")
    lam = schedule.log_snr().numpy()  # descending in t
    t = np.interp(-2 * np.log(values), lam[::-1], np.arange(len(lam))[::-1].astype(np.float64))
    whole = np.round(t)
    return [int(w) if abs(v - w) < _SNAP else float(v) for v, w in zip(t, whole, strict=True)]


def multistep_sigmas(listed: torch.Tensor, schedule: NoiseSchedule, config: Any) -> torch.Tensor:
    """σ at each listed t then the final σ (`config.final_sigmas_type`), float32, as diffusers' multistep schedulers
    keep them: an integer t reads their σ table; a fractional t takes `schedule.sigma_at` (λ interpolated in log-SNR
    as the project's sampler does)."""
    a = schedule.alphas_cumprod
    table = ((1 - a) / a) ** 0.5  # float32, computed as diffusers computes it
    sigmas = schedule.sigma_at(listed.cpu()) if listed.is_floating_point() else table[listed.cpu()]
    if config.final_sigmas_type == "zero":
        last = torch.zeros(1)
    elif config.final_sigmas_type == "sigma_min":
        last = table[:1]
    else:
        raise FieldError("final_sigmas_type", config.final_sigmas_type, "is not one of 'zero', 'sigma_min'")
    return torch.cat([sigmas.float(), last.float()])


def _refuse_other_sigma_spacings(config: Any, keys: Sequence[str]) -> None:
    """A custom list replaces the σ spacing: a config that asks for another (Karras, exponential, …) is refused."""
    for key in keys:
        if config.get(key, False):
            raise FieldError(key, True, "conflicts with a custom timestep list, which sets every σ itself; "
                             f"set {key}=False")


def _install_list(scheduler: Any, listed: torch.Tensor, schedule: NoiseSchedule,
                  device: str | torch.device | None) -> None:
    """Replace the list and σs of a multistep scheduler on which its parent's `set_timesteps` has just run for the
    same number of steps (so its history, step and begin index are reset as diffusers resets them); `schedule` is
    the scheduler's own."""
    scheduler.sigmas = multistep_sigmas(listed, schedule, scheduler.config)
    dtype = torch.float32 if listed.is_floating_point() else torch.int64
    scheduler.timesteps = listed.to(device=device, dtype=dtype)
    scheduler.num_inference_steps = len(listed)


def plan_pass(scheduler: Any, parent_set_timesteps: Callable[[int | None], None], num_inference_steps: int | None,
              device: str | torch.device | None, timesteps: ListInput | None, sigmas: ListInput | None,
              sigma_spacings: Sequence[str]) -> None:
    """The `set_timesteps` of the multistep drop-ins: a step count is spaced by the diffusers parent; a list runs
    the parent for as many steps (which resets the history as diffusers resets it), then replaces its timesteps and
    σs. A list refuses the config keys in `sigma_spacings`, which set the σs themselves."""
    schedule = NoiseSchedule(scheduler.alphas_cumprod)
    listed = custom_list(scheduler.config.num_train_timesteps, num_inference_steps, timesteps, sigmas, schedule)
    if listed is None:
        parent_set_timesteps(num_inference_steps)
        return
    _refuse_other_sigma_spacings(scheduler.config, sigma_spacings)
    parent_set_timesteps(len(listed))
    _install_list(scheduler, listed, schedule, device)
