"""Budget monitors: stop a sample after a number of network evaluations or a wall-clock time, whatever x̂0 looks like.

They are usually combined with a quality monitor (`AnyOf(quality, MaxNFE(30))`) to cap the worst case.
"""

from __future__ import annotations

import time

import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.monitors.base import ThresholdMonitor
from adaptive_sampler.step_info import StepInfo


def _plain(threshold: float) -> float | int:
    """A whole-number threshold as an int (so that 0.0 reads "0" in an error, as the user wrote it)."""
    return int(threshold) if float(threshold).is_integer() else threshold


class MaxNFE(ThresholdMonitor):
    """Done once a sample has taken `threshold` network evaluations (NFE = step + 1; score = NFE)."""

    name = "max-nfe"
    fires_above = True
    takes_tail = False  # a cap on evaluations: no tail after it

    def validate_threshold(self, threshold: float) -> None:
        if threshold < 1 or threshold != int(threshold):
            raise FieldError("threshold", _plain(threshold), "is not a positive integer; max-nfe is a number of "
                             "network evaluations")

    def score(self, info: StepInfo) -> torch.Tensor:
        return torch.full((len(info.sample_indices),), float(info.step + 1), device=info.x0.device)


class Deadline(ThresholdMonitor):
    """Done once `threshold` wall-clock seconds have passed since the batch's first step (score = seconds).

    The host clock is read without a device synchronisation, and a wall-clock budget cannot be simulated from a
    recorded trace, so it has no calibrated threshold.
    """

    name = "deadline"
    fires_above = True
    calibratable = False
    takes_tail = False  # the time is up: no tail after it
    _start: float | None = None  # host clock at the batch's step 0, where all its samples start

    def validate_threshold(self, threshold: float) -> None:
        if threshold <= 0:
            raise FieldError("threshold", _plain(threshold), "is not a positive number of seconds")

    def reset(self) -> None:
        super().reset()
        self._start = None

    def _elapsed(self) -> float:
        now = time.perf_counter()
        if self._start is None:
            self._start = now
        return now - self._start

    def score(self, info: StepInfo) -> torch.Tensor:
        return torch.full((len(info.sample_indices),), self._elapsed(), device=info.x0.device)

    def observe(self, info: StepInfo, checked_step: bool) -> None:
        if self._start is None:  # the clock starts at the batch's first step, whether or not that was a check
            self._elapsed()
