"""One monitor on how much x̂0 still changes from one step to the next, under a pluggable distance.

The score compares x̂0 of this evaluation with x̂0 of the row's previous evaluation (one network evaluation
earlier, also when `every` > 1, so a threshold means the same whatever the check interval). A batch's first step
has no previous x̂0 and so no score. A summary of x̂0 computed at a check is kept for the next step, so with
`every` = 1 each x̂0 is summarised once; both are per-row tensors that compact with the batch.
"""

from __future__ import annotations

from typing import Any

import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.monitors.base import Guardrails, ThresholdMonitor
from adaptive_sampler.monitors.distances import Distance, make_distance
from adaptive_sampler.step_info import StepInfo

# the spec name of a change monitor is its distance's, except for the pixel distance (historically `x0-l2`)
SPEC_NAMES = {"l2": "x0-l2"}


class ChangeMonitor(ThresholdMonitor):
    """Fires when distance(summary(x̂0_prev), summary(x̂0_now)) <= threshold.

    `distance`: a `Distance`, or the name of one in `DISTANCES` (l2, ssim, haarpsi, gmsd, features, lpips,
    sharpness) built with `distance_options`.
    """

    def __init__(self, distance: str | Distance, threshold: float, *, distance_options: dict[str, Any] | None = None,
                 guardrails: Guardrails | None = None, **guardrail_fields: int | None):
        if isinstance(distance, str):
            distance = make_distance(distance, **(distance_options or {}))
        elif distance_options:
            raise FieldError("distance_options", distance_options, "is given with a built distance; pass them to its "
                             "constructor instead")
        if not isinstance(distance, Distance):
            raise FieldError("distance", distance, "is neither a Distance nor the name of one")
        self.distance = distance
        super().__init__(threshold, guardrails=guardrails, **guardrail_fields)

    @property
    def name(self) -> str:  # type: ignore[override]
        return SPEC_NAMES.get(self.distance.name, self.distance.name)

    def score(self, info: StepInfo) -> torch.Tensor:
        current = self.distance.summary(info.x0)
        self.state.tensors["current"] = current
        previous_x0 = self.state.tensors.get("x0")
        if previous_x0 is None:  # the batch's first step
            return torch.full((len(info.sample_indices),), float("nan"), device=info.x0.device)
        previous = self.state.tensors.get("summary")
        if previous is None:  # the previous step was not a check: summarise its x̂0 now
            previous = self.distance.summary(previous_x0)
        return self.distance(previous, current)

    def observe(self, info: StepInfo, checked_step: bool) -> None:
        tensors = self.state.tensors
        tensors["x0"] = info.x0
        current = tensors.pop("current", None)
        if checked_step and current is not None:
            tensors["summary"] = current
        else:
            tensors.pop("summary", None)
