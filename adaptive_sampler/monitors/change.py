"""One monitor on how much x̂0 still changes from one step to the next, under a pluggable distance.

The score compares x̂0 with the row's x̂0 one network evaluation earlier, also when `every` > 1, so a threshold
means the same whatever the check interval. `SteeringChange` uses the same score to steer instead of ending a sample.
"""

from __future__ import annotations

from typing import Any

import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.monitors.base import Guardrails, MonitorDecision, ThresholdMonitor
from adaptive_sampler.monitors.distances import Distance, make_distance
from adaptive_sampler.step_info import StepInfo

# the spec name of a change monitor is its distance's, except for the pixel distance's
SPEC_NAMES = {"l2": "x0-l2"}


class ChangeMonitor(ThresholdMonitor):
    """Fires when distance(summary(x̂0_prev), summary(x̂0_now)) <= threshold; `distance` is a `Distance` or the
    name of one in `DISTANCES`, built with `distance_options`."""

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


class SteeringChange(ChangeMonitor):
    """Multiplies each sample's next step by `grow` when its x̂0 changed less than `low`, by `shrink` above
    `high`, else (and where there is no score) by 1. It never ends a sample, so it composes with an ending monitor
    (`x0-l2:0.02|steer-x0-l2:0.005:0.05`); the planner needs a step size (`SteeredPlan`, `StepSizeControl`).
    """

    steers = True
    calibratable = False

    def __init__(self, distance: str | Distance, low: float, high: float, *, grow: float = 2.0,
                 shrink: float = 0.5, distance_options: dict[str, Any] | None = None,
                 guardrails: Guardrails | None = None, **guardrail_fields: int | None):
        super().__init__(distance, low, distance_options=distance_options, guardrails=guardrails,
                         **guardrail_fields)
        self.high = self._check_threshold(high)
        if self.high < self.threshold:
            raise FieldError("high", high, f"is below low {self.threshold}; steering needs low <= high")
        if not grow > 1:
            raise FieldError("grow", grow, "is not above 1; it is the factor of a step after a small change")
        if not 0 < shrink < 1:
            raise FieldError("shrink", shrink, "is not in (0, 1); it is the factor of a step after a large change")
        self.grow, self.shrink = float(grow), float(shrink)

    @property
    def low(self) -> float:
        return self.threshold

    @property
    def name(self) -> str:  # type: ignore[override]
        return "steer-" + super().name

    def __call__(self, info: StepInfo) -> MonitorDecision:
        score = self._evaluate(info)
        factor = torch.where(score < self.low, self.grow, torch.where(score > self.high, self.shrink, 1.0))
        return MonitorDecision(done=torch.zeros(len(score), dtype=torch.bool, device=score.device), score=score,
                               step_factor=factor.to(torch.float64))

    def spec(self) -> str:
        options = [f"{k}={v}" for k, v in self.guardrails.model_dump(exclude_defaults=True).items()]
        return ",".join([f"{self.name}:{self.low!r}:{self.high!r}", *options])
