"""Which space a monitor sees x̂0 in: a latent model's latents (`space=latent`, free) or its decoded images
(`space=image`, one VAE decode of the checked rows per decoded step).

`ImageSpace` decodes x̂0 only at the steps its monitor reads: the check steps and the step before each (a change
monitor compares with one evaluation earlier). So it scores exactly what the monitor scores on a fully decoded trace,
and calibration in image space is exact. `decode_s` and `decodes` report the decoding, which is in the wall time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import torch

from adaptive_sampler.monitors.base import Monitor, MonitorDecision, ThresholdMonitor
from adaptive_sampler.step_info import StepInfo

SPACES = ("latent", "image")
Decode = Callable[[torch.Tensor], torch.Tensor]


class ImageSpace(Monitor):
    """`monitor` on decoded x̂0 (`decode`: latents -> images); see the module docstring."""

    def __init__(self, monitor: Monitor, decode: Decode) -> None:
        self.monitor, self.decode = monitor, decode
        self.steers = monitor.steers  # type: ignore[misc]
        self.decode_s = 0.0
        self.decodes = 0  # rows decoded

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.monitor.name

    def _reads(self, step: int) -> bool:
        every = self.monitor.guardrails.every if isinstance(self.monitor, ThresholdMonitor) else 1
        return every <= 2 or (step + 1) % every in (0, every - 1)

    def __call__(self, info: StepInfo) -> MonitorDecision:
        rows = len(info.sample_indices)
        if not self._reads(info.step):
            device = info.x0.device
            factor = torch.ones(rows, dtype=torch.float64, device=device) if self.steers else None
            return MonitorDecision(done=torch.zeros(rows, dtype=torch.bool, device=device),
                                   score=torch.full((rows,), float("nan"), device=device), step_factor=factor)
        start = time.perf_counter()
        images = self.decode(info.x0)
        if images.device.type == "cuda":  # the time of the decode itself, not of its launch
            torch.cuda.synchronize(images.device)
        self.decode_s += time.perf_counter() - start
        self.decodes += rows
        return self.monitor(replace(info, x0=images))

    def reset(self) -> None:
        self.monitor.reset()

    def keep(self, rows: torch.Tensor) -> None:
        self.monitor.keep(rows)

    def spec(self) -> str:
        return f"{self.monitor.spec()},space=image"

    def __repr__(self) -> str:
        return f"ImageSpace({self.monitor!r})"


def decode_cost(monitor: object) -> tuple[int, float]:
    """(rows decoded, seconds) of every `ImageSpace` inside `monitor` (composites included)."""
    if isinstance(monitor, ImageSpace):
        return monitor.decodes, monitor.decode_s
    rows, seconds = 0, 0.0
    for child in getattr(monitor, "monitors", ()):
        r, s = decode_cost(child)
        rows, seconds = rows + r, seconds + s
    return rows, seconds


__all__ = ["SPACES", "ImageSpace", "decode_cost"]
