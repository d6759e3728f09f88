"""What a planner is: per row, accept or reject the step just evaluated and choose the next timestep (t_next = -1
ends the row: ᾱ = 1, the step returns x̂0). A static list accepts every step and walks its list; `StepSizeControl`
accepts or rejects. A monitor acts through the planner: its "done" ends a row (see `finish.py`), its `step_factor`
multiplies the next step of a `Steerable` planner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.timesteps import validate_timesteps


@dataclass(frozen=True)
class StepObservation:
    """What the active rows saw at their latest evaluation, row-aligned.

    `t` is where the network just ran; `t_from` and `x0_from` are the last accepted point the step started from
    (None at a batch's first evaluation); `memory` is the per-row value the planner returned last time.
    """

    t: torch.Tensor
    x0: torch.Tensor
    t_from: torch.Tensor | None
    x0_from: torch.Tensor | None
    memory: Any  # a per-row tensor, or another value indexed by a row mask to compact it (FinishMemory)


@dataclass(frozen=True)
class StepDecision:
    """Per row: whether the step to `t` is accepted, the next timestep (-1 = finish with x̂0), the per-row memory
    handed back next time, and the planner's error estimate (zeros where it has none)."""

    accept: torch.Tensor
    t_next: torch.Tensor
    memory: Any
    error: torch.Tensor


@runtime_checkable
class Planner(Protocol):
    """Chooses every row's next timestep. The first evaluation of a batch is always accepted; a rejected row retries
    from its last accepted point, so `t_next` must lie below that point's timestep (the loop checks)."""

    @property
    def name(self) -> str: ...

    def start(self, rows: int, schedule: NoiseSchedule, device: torch.device) -> tuple[torch.Tensor, Any]:
        """The first timestep of each of `rows` rows on `device` (int64) and the initial memory (a tensor [rows], or
        another value that a bool row mask indexes, like `FinishMemory`)."""
        ...

    def decide(self, observation: StepObservation, schedule: NoiseSchedule) -> StepDecision:
        """Per row of `observation`: accept or reject the step just evaluated, and the next timestep."""
        ...


class StaticPlan:
    """The planner of an explicit list: every row accepts every step and walks the list, the last step to -1.

    Its memory is the row's position in the list. Rows only leave early through a monitor, so the loop knows the
    number of evaluations in advance and needs no host synchronisation per step.
    """

    name = "static"

    def __init__(self, timesteps: Sequence[int | float] | torch.Tensor, num_train_timesteps: int) -> None:
        self.timesteps = validate_timesteps(
            timesteps.detach() if isinstance(timesteps, torch.Tensor) else timesteps, num_train_timesteps)
        if isinstance(timesteps, torch.Tensor) and timesteps.requires_grad:  # learning the list: keep its graph
            self.timesteps = timesteps.double()
        self._next = torch.cat([self.timesteps[1:], self.timesteps.new_full((1,), -1)])  # t_next by position

    def start(self, rows: int, schedule: NoiseSchedule, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        self._next = self._next.to(device)
        t = self.timesteps[:1].to(device).expand(rows).clone()
        return t, torch.zeros(rows, dtype=torch.int64, device=device)

    def decide(self, observation: StepObservation, schedule: NoiseSchedule) -> StepDecision:
        position = observation.memory
        t_next = self._next[position]
        accept = torch.ones_like(position, dtype=torch.bool)
        return StepDecision(accept, t_next, position + 1, torch.zeros(len(position), device=position.device))

    def evaluations_left(self, memory: torch.Tensor) -> torch.Tensor:
        """Per row, the evaluations its list has left after a decision that returned `memory`."""
        return len(self.timesteps) - memory


@runtime_checkable
class Countable(Protocol):
    """A planner that knows how many evaluations each row's plan has left (a tail is then never longer)."""

    def evaluations_left(self, memory: Any) -> torch.Tensor: ...


@runtime_checkable
class Steerable(Protocol):
    """A planner with a step size that a monitor may steer (`MonitorDecision.step_factor`)."""

    def steer(self, observation: StepObservation, decision: StepDecision, factor: torch.Tensor,
              schedule: NoiseSchedule) -> StepDecision:
        """`decision` (the planner's on `observation`) with the next step of each accepted, unfinished row
        multiplied by `factor` [rows] (1 = as decided); rejected rows and rows going to -1 keep theirs."""
        ...


def steering_error(planner: object) -> FieldError:
    """The error for a monitor that steers a planner without a step size (`planner` is not `Steerable`)."""
    name = getattr(planner, "name", type(planner).__name__)
    return FieldError("monitor", "step_factor", f"steers step sizes, but planner {name!r} has none (a static list "
                      "cannot change its steps); sample with SteeredPlan(steps=N) or StepSizeControl(tolerance=...)")
