"""What a planner is: per row, accept or reject the step just evaluated and choose the next timestep.

Every row of the sampling loop carries its own current t and its own next t. After each network evaluation the
planner sees the rows' new x̂0 and the last accepted point they stepped from, and returns per row whether that step
is accepted and where to evaluate next (t_next = -1 ends the row: ᾱ = 1, the step returns x̂0). A static list is
the planner that accepts every step and walks its list; `StepSizeControl` accepts or rejects.

A monitor acts through the planner. Its "done" ends a row: with `finish="x0"` the row is sent to -1 at once (it
returns x̂0 of that evaluation); with a tail finish (`Finish`, `tail` = `tail:3:t`) `FinishingPlan` gives the row
a short remaining plan of K tail timesteps from its t down to 0, walked by the run's solver, then -1. A monitor's
`step_factor` steers a planner that has a step size (`steer`, see `Steerable`): the next step is multiplied by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
        """The first timestep [rows] (int64) and the initial memory (a tensor [rows], or another value that a bool
        row mask indexes, like `FinishMemory`)."""
        ...

    def decide(self, observation: StepObservation, schedule: NoiseSchedule) -> StepDecision: ...


class StaticPlan:
    """The planner of an explicit list: every row accepts every step and walks the list, the last step to -1.

    Its memory is the row's position in the list. Rows only leave early through a monitor, so the loop knows the
    number of evaluations in advance and needs no host synchronisation per step.
    """

    name = "static"

    def __init__(self, timesteps: Sequence[int] | torch.Tensor, num_train_timesteps: int) -> None:
        self.timesteps = validate_timesteps(timesteps, num_train_timesteps)
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


@runtime_checkable
class Steerable(Protocol):
    """A planner with a step size that a monitor may steer (`MonitorDecision.step_factor`)."""

    def steer(self, observation: StepObservation, decision: StepDecision, factor: torch.Tensor,
              schedule: NoiseSchedule) -> StepDecision:
        """`decision` with the next step of each accepted, unfinished row multiplied by `factor` [rows] (1 = as
        decided); rejected rows and rows going to -1 keep theirs."""
        ...


# ------------------------------------------------------------------------------------------------ finishing
class Finish(BaseModel):
    """How a sample a monitor marks done finishes.

    `mode="x0"` returns x̂0 of the evaluation the monitor judged (NFE = that evaluation's number). `mode="tail"`
    walks `steps` more evaluations with the run's solver over a tail from the row's t down to t = 0 (then -1, which
    returns x̂0 at t = 0, like a list ending at 0), spaced uniformly in log-SNR (`spacing="logsnr"`) or in t
    (`"t"`); they count in NFE. A tail can be shorter where t has fewer integer timesteps below it, and a row done
    at t = 0 or at the last step of its plan has none. Budget monitors (`max-nfe`, `deadline`) finish with x̂0:
    their evaluations are spent; they also cut a tail at their cap. Strings: `x0`, `tail`, `tail:K`, `tail:K:SPACING`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Literal["x0", "tail"] = "tail"
    steps: int = Field(3, ge=1, le=10)  # K = 3 and spacing in t: the best FID of experiments/choose_finish_tail.py
    spacing: Literal["logsnr", "t"] = "t"

    def spec(self) -> str:
        return "x0" if self.mode == "x0" else f"tail:{self.steps}:{self.spacing}"


# sample()'s default: x̂0, so that offline calibration (which prices x̂0 exits) stays exact; `finish="tail"` is the
# measured tail:3:t (README "Early exit on x̂0")
DEFAULT_FINISH = Finish(mode="x0")
_FINISH_RULE = "write x0, tail, tail:K or tail:K:SPACING with K an integer in [1, 10] and SPACING logsnr or t"


def parse_finish(finish: str | Finish | None) -> Finish:
    """`x0` | `tail` | `tail:K` | `tail:K:SPACING` (or a Finish; None = `DEFAULT_FINISH`) -> Finish."""
    if finish is None:
        return DEFAULT_FINISH
    if isinstance(finish, Finish):
        return finish
    if not isinstance(finish, str):
        raise FieldError("finish", finish, f"is neither a string nor a Finish; {_FINISH_RULE}")
    mode, *rest = [part.strip() for part in finish.split(":")]
    if mode == "x0" and not rest:
        return Finish(mode="x0")
    if mode != "tail" or len(rest) > 2:
        raise FieldError("finish", finish, f"is not a finish mode; {_FINISH_RULE}")
    fields: dict[str, object] = {}
    if rest:
        try:
            fields["steps"] = int(rest[0])
        except ValueError:
            raise FieldError("finish", finish, f"has K = {rest[0]!r}, which is not an integer; "
                             + _FINISH_RULE) from None
    if len(rest) == 2:
        fields["spacing"] = rest[1]
    try:
        return Finish.model_validate({"mode": "tail", **fields})
    except ValidationError as e:
        raise FieldError("finish", finish, f"is refused ({e.errors()[0]['msg']}); {_FINISH_RULE}") from None


def tail_timesteps(t: torch.Tensor, finish: Finish, schedule: NoiseSchedule) -> torch.Tensor:
    """The tail of each row [rows, K] (int64): strictly descending timesteps below its t, the last valid one 0,
    padded with -1 where t has fewer than K integer timesteps below it (t = 0: no tail at all).

    Entry j (1..K) aims at a fraction j/K of the way from t to 0, in log-SNR (rounded towards t: the smallest
    timestep whose log-SNR does not pass the target) or in t (rounded down); each entry is then kept at least one
    below the one before, so a tail never repeats a timestep.
    """
    k = finish.steps
    fraction = torch.arange(1, k + 1, device=t.device, dtype=torch.float64) / k  # [K]
    if finish.spacing == "t":
        tail = (t[:, None] * (k - torch.arange(1, k + 1, device=t.device))) // k
    else:
        lam = schedule.log_snr(t.device).double()  # ascending as t falls
        start = lam[t.clamp(min=0)][:, None]
        target = start + fraction[None] * (lam[0] - start)
        ascending = lam.flip(0)
        index = torch.searchsorted(ascending, target.contiguous(), right=True) - 1
        tail = (len(lam) - 1 - index).clamp(min=0, max=len(lam) - 1)
        tail[:, -1] = 0
    columns, previous = [], t
    for j in range(k):
        previous = torch.minimum(tail[:, j], previous - 1)
        columns.append(previous)
    return torch.stack(columns, 1).clamp(min=-1)


@dataclass(frozen=True)
class FinishMemory:
    """`FinishingPlan`'s per-row memory: the wrapped planner's (`inner`), the position of each finishing row's next
    tail entry (-1: not finishing) and its tail [rows, K]. Indexing by rows compacts all three."""

    inner: torch.Tensor
    position: torch.Tensor
    tail: torch.Tensor

    def __getitem__(self, rows: torch.Tensor) -> FinishMemory:
        return FinishMemory(self.inner[rows], self.position[rows], self.tail[rows])

    def __len__(self) -> int:
        return len(self.position)


def _rows_where(rows: torch.Tensor, mine: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    return torch.where(rows.view(-1, *([1] * (mine.ndim - 1))), mine, theirs)


class FinishingPlan:
    """A planner plus tail finishes: rows a monitor marks done walk their tail (see `Finish`), the others follow
    `inner`. A finishing row is always accepted, its inner memory is frozen, and it is not steered."""

    def __init__(self, inner: Planner, finish: Finish) -> None:
        if finish.mode != "tail":
            raise FieldError("finish", finish.spec(), "is not a tail finish; FinishingPlan needs one")
        self.inner, self.finish_mode = inner, finish
        self.name = inner.name

    def start(self, rows: int, schedule: NoiseSchedule, device: torch.device) -> tuple[torch.Tensor, FinishMemory]:
        t, memory = self.inner.start(rows, schedule, device)
        position = torch.full((rows,), -1, dtype=torch.int64, device=device)
        tail = torch.full((rows, self.finish_mode.steps), -1, dtype=torch.int64, device=device)
        return t, FinishMemory(memory, position, tail)

    @staticmethod
    def finishing(memory: FinishMemory) -> torch.Tensor:
        """Rows walking their tail (done rows): their evaluation now is a tail evaluation."""
        return memory.position >= 0

    def decide(self, observation: StepObservation, schedule: NoiseSchedule) -> StepDecision:
        memory = observation.memory
        assert isinstance(memory, FinishMemory)  # noqa: S101 - the loop hands back what start/decide returned
        inner = self.inner.decide(replace(observation, memory=memory.inner), schedule)
        finishing = memory.position >= 0
        k = memory.tail.shape[1]
        entry = memory.tail.gather(1, memory.position.clamp(0, k - 1)[:, None])[:, 0]
        tail_next = torch.where(memory.position < k, entry, -1)
        inner_memory = inner.memory
        assert isinstance(inner_memory, torch.Tensor)  # noqa: S101
        return StepDecision(inner.accept.to(finishing.device) | finishing,
                            torch.where(finishing, tail_next, inner.t_next.to(finishing.device)),
                            FinishMemory(_rows_where(finishing, memory.inner, inner_memory),
                                         torch.where(finishing, memory.position + 1, memory.position), memory.tail),
                            inner.error)

    def finish(self, done: torch.Tensor, t: torch.Tensor, decision: StepDecision, no_tail: torch.Tensor | None,
               schedule: NoiseSchedule) -> StepDecision:
        """`decision` after a monitor marked `done` rows at their evaluation `t`: rows not yet finishing start their
        tail there (accepted; `no_tail` rows and rows whose plan ends anyway go to -1); finishing rows go on with
        their tail unless a budget cut it (`no_tail`: they go to -1 and return x̂0 of this tail evaluation)."""
        memory = decision.memory
        assert isinstance(memory, FinishMemory)  # noqa: S101
        fresh = done & (memory.position < 0)
        ends = fresh & (decision.t_next < 0) if no_tail is None else (done & no_tail) | (fresh & (decision.t_next < 0))
        begin = fresh & ~ends
        tail = tail_timesteps(t, self.finish_mode, schedule)
        t_next = torch.where(begin, tail[:, 0], torch.where(ends, -1, decision.t_next))
        memory = FinishMemory(memory.inner, torch.where(begin, 1, memory.position),
                              _rows_where(begin, tail, memory.tail))
        return StepDecision(decision.accept | fresh, t_next, memory, decision.error)

    def steer(self, observation: StepObservation, decision: StepDecision, factor: torch.Tensor,
              schedule: NoiseSchedule) -> StepDecision:
        memory = decision.memory
        assert isinstance(memory, FinishMemory)  # noqa: S101
        inner = self.inner
        if not isinstance(inner, Steerable):
            raise steering_error(inner)
        finishing = memory.position >= 0
        seen = observation.memory
        steered = inner.steer(replace(observation, memory=seen.inner if isinstance(seen, FinishMemory) else seen),
                              replace(decision, memory=memory.inner),
                              torch.where(finishing, torch.ones_like(factor), factor), schedule)
        inner_memory = steered.memory
        assert isinstance(inner_memory, torch.Tensor)  # noqa: S101
        return StepDecision(decision.accept, torch.where(finishing, decision.t_next, steered.t_next),
                            FinishMemory(inner_memory, memory.position, memory.tail), decision.error)


def steering_error(planner: object) -> FieldError:
    name = getattr(planner, "name", type(planner).__name__)
    return FieldError("monitor", "step_factor", f"steers step sizes, but planner {name!r} has none (a static list "
                      "cannot change its steps); sample with SteeredPlan(steps=N) or StepSizeControl(tolerance=...)")
