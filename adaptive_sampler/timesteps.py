"""Timestep lists: the one rule every list obeys (policy, user, file, search), and rounding curves onto it."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from adaptive_sampler.errors import FieldError

if TYPE_CHECKING:
    import torch

# torch is imported inside the two functions that return tensors: schedule files are checked without it
# (`adaptive-sampler schedules list` starts in a fraction of a second)


def validate_timesteps(
    values: Sequence[int | float] | torch.Tensor | np.ndarray, num_train_timesteps: int, field: str = "timesteps"
) -> torch.Tensor:
    """Return `values` as a 1-D int64 tensor, or raise FieldError naming the field, the value and the rule
    (see `check_timesteps`)."""
    import torch

    return torch.tensor(check_timesteps(values, num_train_timesteps, field), dtype=torch.int64)


def check_timesteps(
    values: Sequence[int | float] | torch.Tensor | np.ndarray, num_train_timesteps: int, field: str = "timesteps"
) -> list[int]:
    """The one rule every timestep list obeys; returns the list as Python ints, or raises FieldError naming the
    field, the value and the rule.

    Rules: non-empty, integers, unique, strictly descending, inside [0, num_train_timesteps - 1]. Python and numpy
    numbers, lists of them, and 1-D tensors or numpy arrays (integer or integral float) are accepted.
    """
    shape = getattr(values, "shape", None)  # a torch tensor or a numpy array
    if shape is not None:
        if len(shape) != 1:
            raise FieldError(field, tuple(shape), "is the shape of a tensor that is not 1-D; "
                             "timesteps must be a flat list")
        items = values.tolist()  # type: ignore[union-attr]
    elif isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise FieldError(field, values, "is not a list of timesteps; timesteps must be a flat list of integers")
    else:
        items = [v.item() if isinstance(v, np.generic) else v for v in values]
    if not items:
        raise FieldError(field, [], "is empty; at least one timestep is required")
    last = num_train_timesteps - 1
    for i, v in enumerate(items):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or float(v) != int(v):
            raise FieldError(f"{field}[{i}]", v, "is not an integer; timesteps are integer training steps")
        if not 0 <= v <= last:
            raise FieldError(f"{field}[{i}]", int(v),
                             f"is outside [0, {last}] (num_train_timesteps={num_train_timesteps})")
        if i > 0:
            if v == items[i - 1]:
                raise FieldError(f"{field}[{i}]", int(v), f"repeats {field}[{i - 1}]; timesteps must be unique")
            if v > items[i - 1]:
                raise FieldError(f"{field}[{i}]", int(v), f"is above {field}[{i - 1}]={int(items[i - 1])}; "
                                 "timesteps must be strictly descending")
    return [int(v) for v in items]


def discretize(points: np.ndarray, num_train_timesteps: int) -> torch.Tensor:
    """Round a descending curve of real timesteps to integers, keeping it strictly descending inside [0, T-1].

    Where rounding makes neighbours collide (dense ends of a curve), the lower ones are pushed up by one and,
    at the top, the upper ones down, so the list keeps its length. Needs len(points) <= T.
    """
    import torch

    t = np.clip(np.round(points), 0, num_train_timesteps - 1).astype(np.int64)
    for i in range(len(t) - 2, -1, -1):
        t[i] = max(t[i], t[i + 1] + 1)
    t[0] = min(t[0], num_train_timesteps - 1)
    for i in range(1, len(t)):
        t[i] = min(t[i], t[i - 1] - 1)
    return torch.from_numpy(t)
