"""Budget monitors: stop a sample after a number of network evaluations or a wall-clock time, whatever x̂0 looks like.

They are usually combined with a quality monitor (`AnyOf(quality, MaxNFE(30))`) to cap the worst case.
"""

from __future__ import annotations

import time

import torch

from adaptive_sampler.monitors.base import Monitor
from adaptive_sampler.step_info import StepInfo


class MaxNFE(Monitor):
    """Done once a sample has taken `threshold` network evaluations (NFE = step + 1; score = NFE)."""

    name = "max-nfe"
    fires_above = True

    def validate_threshold(self, threshold: float) -> None:
        if threshold < 1 or threshold != int(threshold):
            raise ValueError(f"threshold: {threshold:g} is not a positive integer; max-nfe is a number of network "
                             "evaluations")

    def score(self, info: StepInfo) -> torch.Tensor:
        return torch.full((len(info.sample_indices),), float(info.step + 1), device=info.x0.device)


class Deadline(Monitor):
    """Done once `threshold` wall-clock seconds have passed since the sample's first step (score = seconds).

    The clock of a sample starts when the monitor first sees it, i.e. after its first network evaluation, and
    includes the time of everything the sample shares its batch with (the network, the solver, other monitors).
    On a GPU it reads the host clock without a synchronisation: the device may still be working on queued steps.
    A wall-clock budget cannot be simulated from a recorded trace, so it has no calibrated threshold.
    """

    name = "deadline"
    fires_above = True
    calibratable = False

    def validate_threshold(self, threshold: float) -> None:
        if threshold <= 0:
            raise ValueError(f"threshold: {threshold:g} is not a positive number of seconds")

    def _starts(self, info: StepInfo, now: float) -> torch.Tensor:
        started, present = self.state.get("start", info.sample_indices.tolist())
        start = torch.full((len(info.sample_indices),), now, dtype=torch.float64)
        return start if started is None else torch.where(present, started, start)

    def score(self, info: StepInfo) -> torch.Tensor:
        now = time.perf_counter()
        return (now - self._starts(info, now)).to(info.x0.device)

    def observe(self, info: StepInfo, checked_step: bool) -> None:
        # the clock starts at the sample's first step, whether or not that step was a check
        self.state.put("start", info.sample_indices.tolist(), self._starts(info, time.perf_counter()))
