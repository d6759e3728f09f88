"""What a monitor is: one call, StepInfo -> MonitorDecision(done mask, score), with no-op `reset` and `keep` hooks.

The sampling loop calls `reset()` at every batch start and `keep(rows)` whenever rows leave the batch, so per-row
state is row-aligned tensors (`RowState`) that compact with the batch. `ThresholdMonitor`, the usual plug-in, adds
a threshold, `Guardrails` and a patience streak; a subclass implements only its `score`. The same streak logic
runs online (`__call__`) and offline (`simulate_exits`), so a threshold simulated from a recorded trace exits
exactly where the online run would.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from adaptive_sampler.errors import FieldError
from adaptive_sampler.step_info import StepInfo


@dataclass(frozen=True)
class MonitorDecision:
    """A monitor's verdict on the active rows of one step: `done` rows may stop; `score` [rows] (composites:
    [rows, m]) is NaN on unchecked rows; `step_factor` (steering) multiplies each row's next step; `no_tail`
    (budgets) marks done rows that finish with x̂0 now even under a tail finish."""

    done: torch.Tensor
    score: torch.Tensor
    step_factor: torch.Tensor | None = None
    no_tail: torch.Tensor | None = None


@dataclass
class RowState:
    """Named per-row tensors, row-aligned with the rows of the last StepInfo; `keep(rows)` compacts them all."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def keep(self, rows: torch.Tensor) -> None:
        self.tensors = {name: value[rows.to(value.device)] for name, value in self.tensors.items()}

    def check_rows(self, info: StepInfo, owner: str) -> None:
        """Raise if the stored rows are not the rows of `info` (rows left without a `keep` call)."""
        rows = len(info.sample_indices)
        for name, value in self.tensors.items():
            if len(value) != rows:
                raise ValueError(f"monitor: {owner} holds {len(value)} rows of {name!r} but step {info.step} has "
                                 f"{rows}; call monitor.keep(rows) whenever rows leave the batch (the sampling "
                                 "loop does), or reset() before a new batch")


class Monitor(ABC):
    """The monitor interface: `monitor(info) -> MonitorDecision`, plus the no-op hooks `reset` and `keep`."""

    name: ClassVar[str] = "monitor"
    calibratable: ClassVar[bool] = False  # can its threshold be simulated offline from an x̂0 trace?
    steers: ClassVar[bool] = False  # a steering monitor: it returns a step_factor and never ends a row

    @abstractmethod
    def __call__(self, info: StepInfo) -> MonitorDecision:
        """The decision on the active rows of `info`."""

    def reset(self) -> None:  # noqa: B027 - a no-op hook, like Optuna's callbacks
        """Forget all per-row state (a new batch starts)."""

    def keep(self, rows: torch.Tensor) -> None:  # noqa: B027 - a no-op hook
        """Rows of the last StepInfo left the batch: keep the state of `rows` (bool mask, True = stays) only."""

    def spec(self) -> str:
        """The `monitor_from_spec` string of this monitor."""
        return self.name


class Guardrails(BaseModel):
    """When a monitor may fire. A sample walking its finishing tail is not checked, except by budgets.

    min_steps: check only once a sample has taken this many network evaluations (NFE = step + 1).
    min_t, max_t: check only at steps whose t lies in [min_t, max_t] (None = unbounded); `max_t` is a warm-up.
    patience: fire after this many consecutive satisfied checks.
    every: check only when NFE % every == 0; between checks no score (the costly part) is computed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    min_steps: int = Field(0, ge=0)
    min_t: int | None = Field(None, ge=0)
    max_t: int | None = Field(None, ge=0)
    patience: int = Field(1, ge=1)
    every: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _window(self) -> Guardrails:
        if self.min_t is not None and self.max_t is not None and self.min_t > self.max_t:
            raise ValueError(f"min_t {self.min_t} is above max_t {self.max_t}; the t window [min_t, max_t] is empty")
        return self

    def in_window(self, info: StepInfo, finishing_too: bool = False) -> torch.Tensor:
        """Rows of `info` this step may check (finishing rows only with `finishing_too`)."""
        device = info.x0.device
        check = (info.step + 1) % self.every == 0 and info.step + 1 >= self.min_steps
        ok = torch.full((len(info.sample_indices),), check, dtype=torch.bool, device=device)
        t = info.t.to(device)
        if self.max_t is not None:
            ok &= t <= self.max_t
        if self.min_t is not None:
            ok &= t >= self.min_t
        if info.finishing is not None and not finishing_too:
            ok &= ~info.finishing.to(device)
        return ok


def advance_streak(streak: torch.Tensor, satisfied: torch.Tensor, checked: torch.Tensor) -> torch.Tensor:
    """One step of the patience counter: checked rows count up if satisfied, else reset; unchecked rows keep it."""
    return torch.where(checked, torch.where(satisfied, streak + 1, torch.zeros_like(streak)), streak)


class ThresholdMonitor(Monitor):
    """A score per row, a threshold, guardrails and a patience streak.

    Subclasses set `name`, implement `score` and optionally `rule`, `observe` and `validate_threshold`; per-row
    state goes in `self.state` (a `RowState`), which `keep` compacts.
    """

    fires_above: ClassVar[bool] = False  # rule: score >= threshold (budgets) instead of score <= threshold
    calibratable: ClassVar[bool] = True
    takes_tail: ClassVar[bool] = True  # False (budgets): an ended row skips the tail; finishing rows are judged

    def __init__(self, threshold: float, *, guardrails: Guardrails | None = None, **guardrail_fields: int | None):
        if guardrails is not None and guardrail_fields:
            raise FieldError("guardrails", sorted(guardrail_fields), "are given as fields as well as a Guardrails "
                             "object; pass one of them")
        self.guardrails = guardrails if guardrails is not None else Guardrails(**guardrail_fields)
        self.threshold = self._check_threshold(threshold)
        self.state = RowState()

    # --------------------------------------------------------------------------------------------- subclass API
    @abstractmethod
    def score(self, info: StepInfo) -> torch.Tensor:
        """Score [rows] of the active rows at this step (NaN where there is none yet)."""

    def rule(self, score: torch.Tensor, threshold: float) -> torch.Tensor:
        """Satisfied rows: score <= threshold (>= with `fires_above`). NaN is never satisfied."""
        return score >= threshold if self.fires_above else score <= threshold

    def observe(self, info: StepInfo, checked_step: bool) -> None:
        """Update per-row history after every step (`checked_step`: whether `score` ran at this step)."""

    def validate_threshold(self, threshold: float) -> None:
        """Raise FieldError if `threshold` makes no sense for this monitor (default: >= 0)."""
        if threshold < 0:
            raise FieldError("threshold", threshold, f"is negative; a {self.name} threshold is a change size >= 0")

    # ----------------------------------------------------------------------------------------------- machinery
    def _check_threshold(self, threshold: float) -> float:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise FieldError("threshold", threshold, "is not a number")
        value = float(threshold)
        if value != value or value in (float("inf"), float("-inf")):
            raise FieldError("threshold", threshold, "is not finite")
        self.validate_threshold(value)
        return value

    def with_threshold(self, threshold: float) -> ThresholdMonitor:
        """A fresh copy (no per-row state) with another threshold and the same guardrails."""
        other = copy.copy(self)
        other.threshold = other._check_threshold(threshold)
        other.state = RowState()
        return other

    def reset(self) -> None:
        self.state = RowState()

    def keep(self, rows: torch.Tensor) -> None:
        self.state.keep(rows)

    def _evaluate(self, info: StepInfo) -> torch.Tensor:
        """Score of this step's rows, NaN where not checked; starts afresh at step 0 and updates the history."""
        if info.step == 0:
            self.reset()
        self.state.check_rows(info, type(self).__name__)
        window = self.guardrails.in_window(info, finishing_too=not self.takes_tail)
        rows = len(info.sample_indices)
        checked_step = bool(window.any())
        if checked_step:
            score = self.score(info).to(device=window.device, dtype=torch.float32).reshape(rows)
            score = torch.where(window, score, torch.full_like(score, float("nan")))
        else:
            score = torch.full((rows,), float("nan"), device=window.device)
        self.observe(info, checked_step)
        return score

    def __call__(self, info: StepInfo) -> MonitorDecision:
        score = self._evaluate(info)
        checked = ~torch.isnan(score)
        streak = self.state.tensors.get("streak")
        if streak is None:
            streak = torch.zeros(len(score), dtype=torch.int64, device=score.device)
        streak = advance_streak(streak, self.rule(score, self.threshold) & checked, checked)
        self.state.tensors["streak"] = streak
        done = streak >= self.guardrails.patience
        return MonitorDecision(done=done, score=score, no_tail=None if self.takes_tail else done)

    # ------------------------------------------------------------------------------------ offline (calibration)
    def replay_scores(self, steps: Sequence[StepInfo], n: int, num_steps: int) -> torch.Tensor:
        """Scores [n, num_steps] (NaN where not checked) of a recorded run without exits, batch after batch: the
        scores an online run sees while each sample is active (a score depends only on its row's history)."""
        if not self.calibratable:
            raise FieldError("monitor", self.name, "cannot be simulated from a recorded x̂0 trace")
        scores = torch.full((n, num_steps), float("nan"))
        for info in steps:
            scores[info.sample_indices, info.step] = self._evaluate(info).float().cpu()
        self.reset()
        return scores

    def simulate_exits(self, scores: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
        """Exit step [n] of each sample under `threshold` (default: this monitor's) from `replay_scores` output;
        a sample that never fires exits at the last step."""
        threshold = self.threshold if threshold is None else threshold
        n, num_steps = scores.shape
        streak = torch.zeros(n, dtype=torch.int64)
        exit_step = torch.full((n,), num_steps - 1, dtype=torch.int64)
        alive = torch.ones(n, dtype=torch.bool)
        for k in range(num_steps):
            s = scores[:, k]
            checked = ~torch.isnan(s)
            streak = advance_streak(streak, self.rule(s, threshold) & checked, checked)
            newly = alive & (streak >= self.guardrails.patience)
            exit_step[newly] = k
            alive &= ~newly
        return exit_step

    def spec(self) -> str:
        """The `monitor_from_spec` string of this monitor (threshold and non-default guardrails)."""
        options = [f"{k}={v}" for k, v in self.guardrails.model_dump(exclude_defaults=True).items()]
        threshold = int(self.threshold) if self.fires_above and self.threshold == int(self.threshold) else \
            self.threshold
        return ",".join([f"{self.name}:{threshold!r}", *options])  # repr: the threshold round-trips exactly

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec()!r})"
