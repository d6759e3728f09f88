"""What a monitor is: per-sample early-exit decisions from a StepInfo, with the guardrails in one place.

A monitor looks at one step of the active samples of a batch and returns `MonitorDecision(done, score)`: a bool
mask over the active rows (True = this sample may stop now and return x̂0 of this step) and the score it judged.
A subclass implements only its `score` (one value per row, NaN where it has none yet) and, if the default
"score <= threshold" (or ">= threshold" with `fires_above`) does not fit, its `rule`. Everything else lives here:

- per-sample state keyed by the *global* sample index (`SampleState`), so batching and the compaction of exited
  rows never misalign a sample with another's history; state is dropped when a sample leaves the batch or
  finishes, and reset when a sample is seen at step 0;
- guardrails (`Guardrails`): a warm-up (`min_steps` network evaluations, and a window `min_t <= t <= max_t`),
  `patience` (consecutive satisfied checks) and `every` (check only after every k-th network evaluation).

The same streak logic runs online (`__call__`) and offline (`simulate_exits`, used by calibration), so a
threshold simulated from a recorded trace exits exactly where the online run would.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from adaptive_sampler.step_info import StepInfo


@dataclass(frozen=True)
class MonitorDecision:
    """A monitor's verdict on the active rows of one step.

    `done` [rows] bool: the samples that may stop at this step. `score` [rows] (or [rows, m] for a composite of m
    monitors) float: the value the rule judged, NaN on rows that were not checked at this step.
    """

    done: torch.Tensor
    score: torch.Tensor


class Guardrails(BaseModel):
    """When a monitor may fire (validated; a bad value names its field).

    min_steps: a sample is checked only once it has taken at least this many network evaluations (NFE = step + 1).
    min_t, max_t: a sample is checked only at steps whose t lies in [min_t, max_t] (None = unbounded); `max_t` is
        the usual warm-up in noise level ("not before t <= 600").
    patience: the monitor fires after this many consecutive satisfied checks.
    every: checks happen only after every k-th network evaluation (NFE % every == 0); between checks the monitor
        keeps its per-sample history (cheap) but computes no score (the costly part).
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

    def in_window(self, info: StepInfo) -> torch.Tensor:
        """Rows of `info` that this step may check: warm-up and t window passed, and a check step."""
        t = info.t.to(info.x0.device)
        ok = torch.full((len(info.sample_indices),), (info.step + 1) % self.every == 0, dtype=torch.bool,
                        device=info.x0.device)
        if info.step + 1 < self.min_steps:
            ok[:] = False
        if self.max_t is not None:
            ok &= t <= self.max_t
        if self.min_t is not None:
            ok &= t >= self.min_t
        return ok


class SampleState:
    """Per-sample tensors keyed by global sample index: `state.get("prev_x0", indices)` -> (stacked, present)."""

    def __init__(self) -> None:
        self._data: dict[str, dict[int, torch.Tensor]] = {}

    def get(self, key: str, indices: Sequence[int]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Values of `key` for `indices` stacked on a new first axis (zeros where absent), and the present mask."""
        store = self._data.get(key, {})
        present = [i in store for i in indices]
        mask = torch.tensor(present, dtype=torch.bool)
        if not any(present):
            return None, mask
        template = next(store[i] for i in indices if i in store)
        values = torch.stack([store[i] if i in store else torch.zeros_like(template) for i in indices])
        return values, mask.to(template.device)

    def put(self, key: str, indices: Sequence[int], values: torch.Tensor | None) -> None:
        """Store row r of `values` for sample indices[r]; None removes `key` for those samples."""
        store = self._data.setdefault(key, {})
        if values is None:
            for i in indices:
                store.pop(i, None)
            return
        for i, v in zip(indices, values):
            store[i] = v

    def forget(self, indices: Sequence[int]) -> None:
        for store in self._data.values():
            for i in indices:
                store.pop(i, None)

    def clear(self) -> None:
        self._data.clear()

    def tracked(self) -> set[int]:
        """Sample indices that have any state."""
        return set().union(*(store.keys() for store in self._data.values())) if self._data else set()


def advance_streak(streak: torch.Tensor, satisfied: torch.Tensor, checked: torch.Tensor) -> torch.Tensor:
    """One step of the patience counter: checked rows count up if satisfied, else reset; unchecked rows keep it."""
    return torch.where(checked, torch.where(satisfied, streak + 1, torch.zeros_like(streak)), streak)


class Monitor(ABC):
    """Base class of all monitors: guardrails, per-sample state and the done logic; see the module docstring.

    Subclasses set `name`, implement `score(info)` (float [rows]; NaN = no score yet) and optionally `rule`,
    `observe(info)` (called every step after scoring, to update per-sample history) and `forget_samples`.
    Call the monitor on each StepInfo; `as_callback()` adapts it to `sample(..., callback=...)`.
    """

    name: ClassVar[str] = "monitor"
    fires_above: ClassVar[bool] = False  # rule: score >= threshold (budgets) instead of score <= threshold
    calibratable: ClassVar[bool] = True  # can its threshold be simulated offline from an x̂0 trace?

    def __init__(self, threshold: float, *, guardrails: Guardrails | None = None, **guardrail_fields: int | None):
        if guardrails is not None and guardrail_fields:
            raise ValueError(f"guardrails: given both as an object and as fields {sorted(guardrail_fields)}")
        self.guardrails = guardrails if guardrails is not None else Guardrails(**guardrail_fields)
        self.threshold = self._check_threshold(threshold)
        self.state = SampleState()
        self._last_rows: set[int] = set()

    # --------------------------------------------------------------------------------------------- subclass API
    @abstractmethod
    def score(self, info: StepInfo) -> torch.Tensor:
        """Score [rows] of the active rows at this step (NaN where there is none yet)."""

    def rule(self, score: torch.Tensor, threshold: float) -> torch.Tensor:
        """Satisfied rows: score <= threshold (score >= threshold for budgets). NaN is never satisfied."""
        return score >= threshold if self.fires_above else score <= threshold

    def observe(self, info: StepInfo, checked_step: bool) -> None:
        """Update per-sample history after every step (`checked_step`: whether `score` ran at this step)."""

    def validate_threshold(self, threshold: float) -> None:
        """Raise ValueError if `threshold` makes no sense for this monitor (default: finite and >= 0)."""
        if threshold < 0:
            raise ValueError(f"threshold: {threshold} is negative; a {self.name} threshold is a change size >= 0")

    # ----------------------------------------------------------------------------------------------- machinery
    def _check_threshold(self, threshold: float) -> float:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(f"threshold: {threshold!r} is not a number")
        value = float(threshold)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"threshold: {threshold} is not finite")
        self.validate_threshold(value)
        return value

    def with_threshold(self, threshold: float) -> Monitor:
        """A fresh copy (no per-sample state) with another threshold and the same guardrails."""
        other = copy.copy(self)
        other.threshold = other._check_threshold(threshold)
        other.state = SampleState()
        other._last_rows = set()
        return other

    def reset(self) -> None:
        """Forget all per-sample state (a new run)."""
        self.state.clear()
        self._last_rows = set()
        self.forget_samples(None)

    def forget_samples(self, indices: Sequence[int] | None) -> None:
        """Hook for subclasses keeping state outside `self.state` (None = all samples)."""

    def _sync_rows(self, info: StepInfo, rows: list[int]) -> None:
        """Drop the state of samples that left the batch, and reset samples starting afresh at step 0."""
        current = set(rows)
        gone = [i for i in self._last_rows if i not in current]
        fresh = rows if info.step == 0 else []
        if gone or fresh:
            self.state.forget(gone + fresh)
            self.forget_samples(gone + fresh)

    def _end_step(self, info: StepInfo, rows: list[int]) -> None:
        if bool((info.t_prev < 0).all()):  # the last step: these samples are finished
            self.state.forget(rows)
            self.forget_samples(rows)
            self._last_rows = set()
        else:
            self._last_rows = set(rows)

    def _evaluate(self, info: StepInfo) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(score, satisfied, checked) of this step's rows; score is NaN where not checked."""
        window = self.guardrails.in_window(info)
        rows = len(info.sample_indices)
        if bool(window.any()):
            score = self.score(info).to(device=window.device, dtype=torch.float32).reshape(rows)
            score = torch.where(window, score, torch.full_like(score, float("nan")))
        else:
            score = torch.full((rows,), float("nan"), device=window.device)
        self.observe(info, bool(window.any()))
        checked = ~torch.isnan(score)
        return score, self.rule(score, self.threshold) & checked, checked

    def __call__(self, info: StepInfo) -> MonitorDecision:
        rows = info.sample_indices.tolist()
        self._sync_rows(info, rows)
        score, satisfied, checked = self._evaluate(info)
        streak, present = self.state.get("streak", rows)
        streak = torch.zeros(len(rows), dtype=torch.int64, device=score.device) if streak is None else \
            torch.where(present.to(score.device), streak.to(score.device), 0)
        streak = advance_streak(streak, satisfied, checked)
        self.state.put("streak", rows, streak)
        done = streak >= self.guardrails.patience
        self._end_step(info, rows)
        return MonitorDecision(done=done, score=score)

    def as_callback(self, record: list[MonitorDecision] | None = None) -> Callable[[StepInfo], torch.Tensor]:
        """A `sample(..., callback=)` that returns the done mask (appending each decision to `record` if given)."""
        self.reset()

        def callback(info: StepInfo) -> torch.Tensor:
            decision = self(info)
            if record is not None:
                record.append(decision)
            return decision.done

        return callback

    # ------------------------------------------------------------------------------------ offline (calibration)
    def replay_scores(self, steps: Sequence[StepInfo], n: int, num_steps: int) -> torch.Tensor:
        """Scores [n, num_steps] (NaN where not checked) of a recorded run without exits, on the CPU.

        Each sample's score depends only on its own x̂0 history, so these are the scores an online run sees at
        every step the sample is still active.
        """
        if not self.calibratable:
            raise ValueError(f"monitor: {self.name!r} cannot be simulated from a recorded x̂0 trace")
        self.reset()
        scores = torch.full((n, num_steps), float("nan"))
        for info in steps:
            rows = info.sample_indices.tolist()
            self._sync_rows(info, rows)
            score, _, _ = self._evaluate(info)
            scores[info.sample_indices, info.step] = score.float().cpu()
            self._end_step(info, rows)
        self.reset()
        return scores

    def simulate_exits(self, scores: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
        """Exit step [n] of each sample under `threshold` (default: this monitor's) from `replay_scores` output.

        A sample that never fires exits at the last step (the full run). Uses the same streak logic as online.
        """
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
