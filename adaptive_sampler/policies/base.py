"""What a step-allocation policy is, and how continuous timestep curves become valid integer lists."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.noise_schedule import NoiseSchedule


@runtime_checkable
class Policy(Protocol):
    """Plans the timesteps of a sampling run.

    `timesteps` returns a strictly descending 1-D int64 tensor inside [0, T-1] (see `validate_timesteps`).
    `num_steps` may be None only for policies whose list has its own length (explicit, a catalogue entry, a file).
    """

    def timesteps(self, num_steps: int | None, schedule: NoiseSchedule) -> torch.Tensor: ...


def require_num_steps(num_steps: int | None, schedule: NoiseSchedule, policy: str) -> int:
    """The step count, checked: a positive integer no larger than the number of training timesteps."""
    if num_steps is None:
        raise FieldError("num_steps", None, f"is not allowed for policy {policy!r}; give a step count")
    if not 1 <= num_steps <= schedule.num_train_timesteps:
        raise FieldError("num_steps", num_steps,
                         f"is outside [1, {schedule.num_train_timesteps}] (the training timesteps)")
    return num_steps
