"""Timestep lists: the one rule every list obeys (policy, user, file, search), and rounding curves onto it."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from adaptive_sampler.errors import FieldError

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that return tensors: `schedules list` checks files without loading it


def validate_timesteps(
    values: Sequence[int | float] | torch.Tensor | np.ndarray, num_train_timesteps: int, field: str = "timesteps",
    *, integers: bool = False,
) -> torch.Tensor:
    """`values` as a 1-D tensor, int64 for an integer list and float64 for a fractional one, checked by
    `check_timesteps` (same arguments).

    Args:
        values: the timesteps.
        num_train_timesteps: T of the model.
        field: the name errors give the list.
        integers: refuse fractional timesteps.
    """
    import torch

    checked = check_timesteps(values, num_train_timesteps, field, integers=integers)
    return torch.tensor(checked, dtype=torch.float64 if is_fractional(checked) else torch.int64)


def is_fractional(timesteps: Sequence[int | float]) -> bool:
    """Whether a list `check_timesteps` returned (whole numbers as ints) holds a fractional timestep."""
    return any(isinstance(v, float) for v in timesteps)


def check_timesteps(
    values: Sequence[int | float] | torch.Tensor | np.ndarray, num_train_timesteps: int, field: str = "timesteps",
    *, integers: bool = False,
) -> list[int | float]:
    """The one rule every timestep list obeys; returns the list as Python numbers (whole numbers as ints, others as
    floats), or raises FieldError naming the field, the value and the rule.

    Rules: non-empty, finite numbers, unique, strictly descending, inside [0, num_train_timesteps - 1]. A timestep
    may be fractional (ᾱ is then interpolated in log-SNR, see `NoiseSchedule.alpha_bar`) unless `integers` is set,
    for consumers that index a table by t (diffusers' schedulers).

    Args:
        values: Python or numpy numbers, a list of them, or a 1-D tensor or numpy array.
        num_train_timesteps: T of the model.
        field: the name errors give the list (an item is `field[i]`).
        integers: refuse fractional timesteps.
    """
    shape = getattr(values, "shape", None)  # a torch tensor or a numpy array
    if shape is not None:
        if len(shape) != 1:
            raise FieldError(field, tuple(shape), "is the shape of a tensor that is not 1-D; "
                             "timesteps must be a flat list")
        items = values.tolist()  # type: ignore[union-attr]
    elif isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise FieldError(field, values, "is not a list of timesteps; timesteps must be a flat list of numbers")
    else:
        items = [v.item() if isinstance(v, np.generic) else v for v in values]
    if not items:
        raise FieldError(field, [], "is empty; at least one timestep is required")
    last = num_train_timesteps - 1
    checked: list[int | float] = []
    for i, v in enumerate(items):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise FieldError(f"{field}[{i}]", v, "is not a finite number; timesteps are training steps in "
                             f"[0, {last}]")
        if integers and float(v) != int(v):
            raise FieldError(f"{field}[{i}]", v, "is not an integer; this consumer indexes its ᾱ table by "
                             "integer timesteps (round the list, e.g. ScheduleArtifact.to_diffusers_timesteps)")
        value: int | float = int(v) if float(v) == int(v) else float(v)
        if not 0 <= value <= last:
            raise FieldError(f"{field}[{i}]", value,
                             f"is outside [0, {last}] (num_train_timesteps={num_train_timesteps})")
        if checked:
            if value == checked[-1]:
                raise FieldError(f"{field}[{i}]", value, f"repeats {field}[{i - 1}]; timesteps must be unique")
            if value > checked[-1]:
                raise FieldError(f"{field}[{i}]", value, f"is above {field}[{i - 1}]={checked[-1]}; "
                                 "timesteps must be strictly descending")
        checked.append(value)
    return checked


def discretize(points: np.ndarray, num_train_timesteps: int) -> torch.Tensor:
    """Round a descending curve of real timesteps to integers, keeping it strictly descending inside [0, T-1].

    Where rounding makes neighbours collide (dense ends of a curve), the lower ones are pushed up by one and,
    at the top, the upper ones down, so the list keeps its length.

    Args:
        points: a descending curve of at most T real timesteps.
        num_train_timesteps: T of the model.
    """
    import torch

    t = np.clip(np.round(points), 0, num_train_timesteps - 1).astype(np.int64)
    for i in range(len(t) - 2, -1, -1):
        t[i] = max(t[i], t[i + 1] + 1)
    t[0] = min(t[0], num_train_timesteps - 1)
    for i in range(1, len(t)):
        t[i] = min(t[i], t[i - 1] - 1)
    return torch.from_numpy(t)
