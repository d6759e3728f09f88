"""Monitors made of monitors: `AnyOf` is done when any child is done, `AllOf` when all are done at the same step.

Every child sees every step with its own state and guardrails. Steering children take no part in the vote; their
step factors multiply. Which child stopped each sample (`stopped_by`) is kept as tensors and read once per batch,
so there is no host sync per step.
"""

from __future__ import annotations

import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.monitors.base import Monitor, MonitorDecision
from adaptive_sampler.step_info import StepInfo


class _Composite(Monitor):
    combine_all: bool = False

    def __init__(self, *monitors: Monitor):
        if not monitors:
            raise FieldError("monitors", [], f"is empty; {type(self).__name__} needs at least one monitor")
        for i, m in enumerate(monitors):
            if not isinstance(m, Monitor):
                raise FieldError(f"monitors[{i}]", m, "is not a Monitor")
        self.monitors = tuple(monitors)
        self._stopped: dict[int, str] = {}
        # per step: (global sample indices, index of the child that stopped the row early or -1, batch start?)
        self._pending: list[tuple[torch.Tensor, torch.Tensor, bool]] = []

    def __call__(self, info: StepInfo) -> MonitorDecision:
        device = info.x0.device
        decisions = [m(info) for m in self.monitors]
        done = torch.stack([d.done.to(device) for d in decisions], dim=1)
        enders = [i for i, m in enumerate(self.monitors) if not m.steers]
        if not enders:
            combined = torch.zeros(len(done), dtype=torch.bool, device=device)
        elif self.combine_all:
            combined = done[:, enders].all(1) if len(enders) < len(self.monitors) else done.all(1)
        else:
            combined = done.any(1)
        score = torch.cat([d.score.reshape(len(d.done), -1).to(device) for d in decisions], dim=1)
        # stopped early: done at a step that did not end the chain anyway (and not while walking a finishing tail)
        early = combined & (info.t_prev.to(combined.device) >= 0)
        if info.finishing is not None:
            early &= ~info.finishing.to(device)
        child = torch.where(early, done.int().argmax(1), -1)  # AnyOf: the first child that fired
        self._pending.append((info.sample_indices, child, info.step == 0))
        factors = [d.step_factor.to(device) for d in decisions if d.step_factor is not None]
        factor = None
        for f in factors:
            factor = f if factor is None else factor * f
        no_tails = [d.no_tail.to(device) for d in decisions if d.no_tail is not None]
        no_tail = torch.stack(no_tails, 1).any(1) & combined if no_tails else None
        return MonitorDecision(done=combined, score=score, step_factor=factor, no_tail=no_tail)

    @property
    def stopped_by(self) -> dict[int, str]:
        """Global sample index -> spec of the child that stopped it early (AllOf: the whole spec), for the samples
        of the latest batch each index was sampled in; samples that ran to the end are absent."""
        for indices, child, batch_start in self._pending:
            if batch_start:  # a new batch: its samples' earlier records are stale
                for i in indices.tolist():
                    self._stopped.pop(i, None)
            child = child.cpu()
            hit = child >= 0
            for i, c in zip(indices.cpu()[hit].tolist(), child[hit].tolist(), strict=True):
                self._stopped[i] = self.spec() if self.combine_all else self.monitors[c].spec()
        self._pending = []
        return dict(self._stopped)

    def reset(self) -> None:
        self.stopped_by  # noqa: B018 - fold the last batch's verdicts into the record (one transfer per batch)
        for m in self.monitors:
            m.reset()

    def keep(self, rows: torch.Tensor) -> None:
        for m in self.monitors:
            m.keep(rows)

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
