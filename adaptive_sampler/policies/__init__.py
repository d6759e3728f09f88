"""Step-allocation policies: objects whose `timesteps(num_steps, schedule)` plans a sampling run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from adaptive_sampler.errors import FieldError, did_you_mean
from adaptive_sampler.policies.base import Policy
from adaptive_sampler.policies.builtin import (
    Explicit,
    FrontLoaded,
    Karras,
    Leading,
    LogSNR,
    Quadratic,
    Trailing,
    Uniform,
)
from adaptive_sampler.policies.replay import CatalogueEntry, FromFile, check_model, check_solver, interpolated_from
from adaptive_sampler.timesteps import discretize, validate_timesteps

STATIC_POLICIES: dict[str, type] = {"uniform": Uniform, "leading": Leading, "trailing": Trailing,
                                    "quadratic": Quadratic, "karras": Karras, "logsnr": LogSNR,
                                    "front-loaded": FrontLoaded}
POLICY_NAMES = (*STATIC_POLICIES, "explicit", "learned:<model>/<family>-<N>", "file:<path>")
DYNAMIC_POLICY_NAMES = ("adaptive:<tolerance>", "steered:<N>")  # per-sample plans (policies.step_size_control)


def make_policy(name: str, timesteps: Sequence[int | float] | None = None) -> Policy:
    """Build a policy from its name: a built-in (`uniform`, `karras`, …), `explicit` (needs `timesteps`),
    `learned:<catalogue entry>` or `file:<schedule.json>`."""
    if name == "explicit":
        if timesteps is None:
            raise FieldError("timesteps", None, "is not allowed for policy 'explicit'; it needs a timestep list")
        return Explicit(tuple(timesteps))
    if timesteps is not None:
        raise FieldError("timesteps", list(timesteps), f"is only used with policy 'explicit', not {name!r}")
    if name.startswith("learned:"):
        return CatalogueEntry(name.removeprefix("learned:"))
    if name.startswith("file:"):
        return FromFile(Path(name.removeprefix("file:")))
    if name not in STATIC_POLICIES:
        every = (*POLICY_NAMES, *DYNAMIC_POLICY_NAMES)
        raise FieldError("policy", name, f"is not one of {', '.join(every)}{did_you_mean(name, every)}")
    return STATIC_POLICIES[name]()


__all__ = [
    "DYNAMIC_POLICY_NAMES", "POLICY_NAMES", "STATIC_POLICIES", "CatalogueEntry", "Explicit", "FromFile", "FrontLoaded",
    "Karras", "Leading", "LogSNR", "Policy", "Quadratic", "Trailing", "Uniform", "check_model", "check_solver",
    "discretize", "interpolated_from", "make_policy", "validate_timesteps",
]
