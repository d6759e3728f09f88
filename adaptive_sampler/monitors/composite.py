"""Monitors made of monitors: `AnyOf` fires when any child is done, `AllOf` when all are done at the same step."""

from __future__ import annotations

import torch

from adaptive_sampler.monitors.base import Guardrails, Monitor
from adaptive_sampler.step_info import StepInfo


class _Composite(Monitor):
    calibratable = False
    combine_all: bool = False

    def __init__(self, *monitors: Monitor, guardrails: Guardrails | None = None, **guardrail_fields: int | None):
        if not monitors:
            raise ValueError(f"monitors: {type(self).__name__} needs at least one monitor")
        for i, m in enumerate(monitors):
            if not isinstance(m, Monitor):
                raise ValueError(f"monitors[{i}]: {m!r} is not a Monitor")
        self.monitors = tuple(monitors)
        # global sample index -> spec of the child that stopped it (all children's for AllOf)
        self.stopped_by: dict[int, str] = {}
        super().__init__(0.0, guardrails=guardrails, **guardrail_fields)

    def score(self, info: StepInfo) -> torch.Tensor:  # pragma: no cover - composites judge their children's verdicts
        raise NotImplementedError("a composite monitor has no score of its own")

    def _evaluate(self, info: StepInfo) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # every child sees every step (it keeps its own history and guardrails); the composite's own guardrails
        # then decide when the children's combined verdict counts
        decisions = [m(info) for m in self.monitors]
        done = torch.stack([d.done for d in decisions], dim=1)
        combined = done.all(1) if self.combine_all else done.any(1)
        score = torch.cat([d.score.reshape(len(d.done), -1) for d in decisions], dim=1)
        checked = self.guardrails.in_window(info)
        for row in (combined & checked).nonzero().flatten().tolist():
            firing = [m.spec() for m, fired in zip(self.monitors, done[row].tolist()) if fired]
            self.stopped_by[int(info.sample_indices[row])] = ("&" if self.combine_all else "|").join(
                firing if self.combine_all else firing[:1])
        return score, combined & checked, checked

    def reset(self) -> None:
        super().reset()
        self.stopped_by = {}
        for m in self.monitors:
            m.reset()

    def spec(self) -> str:
        joiner = "&" if self.combine_all else "|"
        return joiner.join(m.spec() for m in self.monitors)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.monitors))})"


class AnyOf(_Composite):
    """Done when any child monitor is done (e.g. a quality monitor OR a budget). Score: children's, [rows, m]."""

    name = "any-of"
    combine_all = False


class AllOf(_Composite):
    """Done when every child monitor is done at the same step. Score: children's, [rows, m]."""

    name = "all-of"
    combine_all = True
