"""How a row that a monitor marked done ends: at once with x̂0 (`Finish(mode="x0")`: the row is sent to -1), or
through a short tail of K solver steps from its t down to 0, then -1 (`FinishingPlan`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adaptive_sampler.errors import FieldError
from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.planner import Countable, Planner, Steerable, StepDecision, StepObservation, steering_error


class Finish(BaseModel):
    """How a sample a monitor marks done finishes.

    `mode="x0"` returns x̂0 of the evaluation the monitor judged (NFE = that evaluation's number). `mode="tail"`
    walks `steps` more evaluations with the run's solver over a tail from the row's t down to t = 0 (then -1, which
    returns x̂0 at t = 0, like a list ending at 0), spaced uniformly in log-SNR (`spacing="logsnr"`) or in t
    (`"t"`); they count in NFE. A tail can be shorter where t has fewer integer timesteps below it, and a row done
    at t = 0 or at the last step of its plan has none. A row whose static list has at most `steps` evaluations left
    walks the list to its end instead: the same cost or less, and the full run's sample. Budget monitors
    (`max-nfe`, `deadline`) finish with x̂0: their evaluations are spent; they also cut a tail at their cap.
    Strings: `x0`, `tail`, `tail:K`, `tail:K:SPACING`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Literal["x0", "tail"] = "tail"
    steps: int = Field(3, ge=1, le=10)  # K = 3 and spacing in t: the best FID measured (docs/experiments.md)
    spacing: Literal["logsnr", "t"] = "t"

    def spec(self) -> str:
        return "x0" if self.mode == "x0" else f"tail:{self.steps}:{self.spacing}"


# sample()'s default: tail:3:t, the finish of the best measured FID (docs/experiments.md); offline calibration
# prices x̂0 exits, so under the tail its thresholds are conservative
DEFAULT_FINISH = Finish()
_FINISH_RULE = "write x0, tail, tail:K or tail:K:SPACING with K an integer in [1, 10] and SPACING logsnr or t"


def parse_finish(finish: str | None) -> Finish:
    """`x0` | `tail` | `tail:K` | `tail:K:SPACING` (None = `DEFAULT_FINISH`) -> Finish."""
    if finish is None:
        return DEFAULT_FINISH
    if not isinstance(finish, str):
        raise FieldError("finish", finish, f"is not a string; {_FINISH_RULE}")
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
    """The tail of each row [rows, K] (t's dtype): strictly descending timesteps below its t, the last valid one 0,
    padded with -1 where t has fewer than K integer timesteps below it (t = 0: no tail at all). A fractional t
    gets integer tail entries.

    Entry j (1..K) aims at a fraction j/K of the way from t to 0, in log-SNR (rounded towards t: the smallest
    timestep whose log-SNR does not pass the target) or in t (rounded down); each entry is then kept at least one
    below the one before, so a tail never repeats a timestep. `finish` gives K and the spacing.
    """
    k = finish.steps
    fraction = torch.arange(1, k + 1, device=t.device, dtype=torch.float64) / k  # [K]
    if finish.spacing == "t":
        tail = (t[:, None] * (k - torch.arange(1, k + 1, device=t.device))) // k
    else:
        lam = schedule.log_snr(t.device).double()  # ascending as t falls
        start = schedule.log_snr_at(t.clamp(min=0))[:, None]
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
        tail there (accepted; `no_tail` rows and rows whose plan ends anyway go to -1; rows whose `Countable` plan
        has at most K evaluations left go on with it); finishing rows go on with their tail unless a budget cut it
        (`no_tail`: they go to -1 and return x̂0 of this tail evaluation)."""
        memory = decision.memory
        assert isinstance(memory, FinishMemory)  # noqa: S101
        fresh = done & (memory.position < 0)
        ends = fresh & (decision.t_next < 0) if no_tail is None else (done & no_tail) | (fresh & (decision.t_next < 0))
        begin = fresh & ~ends
        if isinstance(self.inner, Countable):  # a plan with at most K evaluations left is cheaper walked to its end
            begin &= self.inner.evaluations_left(memory.inner) > self.finish_mode.steps
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
