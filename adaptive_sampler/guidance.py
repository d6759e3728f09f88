"""Where classifier-free guidance applies: an interval of timesteps (`GuidanceInterval`, `--guidance-interval`).

Guidance only in a middle interval of noise levels improves sample and distribution quality and skips most
unconditional evaluations (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval improves sample and
distribution quality in diffusion models", arXiv:2404.07724). Outside the interval a step runs only the
conditional rows, so it costs one network evaluation per sample instead of two. Nothing here imports torch, so the
command line checks the flag before it loads anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adaptive_sampler.errors import FieldError

if TYPE_CHECKING:
    import torch

__all__ = ["GuidanceInterval"]

FORM = "HIGH:LOW, two timesteps with HIGH > LOW >= 0, e.g. 700:200"


def _text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(frozen=True)
class GuidanceInterval:
    """Guidance applies at the timesteps t with `low` <= t <= `high` (training-timestep units, the t the network
    gets; fractional allowed); at any other t a step evaluates the conditional rows alone.

    A bad bound raises FieldError naming `guidance_interval` (`check` adds the model's range [0, T - 1]).
    """

    high: float
    low: float

    def __post_init__(self) -> None:
        numbers = (self.high, self.low)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
            raise FieldError("guidance_interval", f"{self.high}:{self.low}", f"is not {FORM}")
        if self.high <= self.low:
            raise FieldError("guidance_interval", str(self), "has HIGH <= LOW; give the higher timestep first "
                             f"({FORM}: guidance applies where LOW <= t <= HIGH)")
        if self.low < 0:
            raise FieldError("guidance_interval", str(self), "has LOW below 0; timesteps are >= 0")

    @classmethod
    def parse(cls, text: str) -> GuidanceInterval:
        """`HIGH:LOW` (e.g. `700:200`, `650.5:120`) as an interval; else FieldError naming `guidance_interval`."""
        parts = str(text).split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            high, low = (float(part) for part in parts)
        except ValueError:
            raise FieldError("guidance_interval", text, f"is not two numbers; give {FORM}") from None
        return cls(int(high) if high.is_integer() else high, int(low) if low.is_integer() else low)

    @classmethod
    def from_value(cls, value: Any) -> GuidanceInterval:
        """An interval from a `GuidanceInterval`, its `HIGH:LOW` text or a (high, low) pair."""
        if isinstance(value, GuidanceInterval):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, list | tuple) and len(value) == 2:
            return cls(*value)
        raise FieldError("guidance_interval", value, f"is not {FORM}")

    def check(self, num_train_timesteps: int) -> None:
        """FieldError naming `guidance_interval` if HIGH lies above the model's last timestep T - 1."""
        if self.high > num_train_timesteps - 1:
            raise FieldError("guidance_interval", str(self), f"is outside [0, {num_train_timesteps - 1}] (the "
                             f"model's {num_train_timesteps} training timesteps)")

    def covers(self, t: torch.Tensor) -> torch.Tensor:
        """A bool per row of `t`: True where guidance applies (low <= t <= high)."""
        return (t >= self.low) & (t <= self.high)

    def __str__(self) -> str:
        return f"{_text(self.high)}:{_text(self.low)}"
