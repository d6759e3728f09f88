"""Monitors on how much x̂0 still changes from one step to the next: pixels, structure, features, sharpness.

Each score compares x̂0 of this step with x̂0 of the sample's previous step (one network evaluation earlier, also
when `every` > 1, so a threshold means the same whatever the check interval). A sample's first step has no
previous x̂0 and so no score. Subclasses give a `summary` of x̂0 (default: x̂0 itself; features, sharpness) and a
`distance` between two summaries; summaries computed at a check are kept for the next step, so with `every` = 1
each x̂0 is summarised once.
"""

from __future__ import annotations

from collections.abc import Sequence

import piq
import torch
import torch.nn.functional as F

from adaptive_sampler.metrics.features import EmbeddedFeatureExtractor, FeatureExtractor
from adaptive_sampler.metrics.fidelity import to_unit_range
from adaptive_sampler.monitors.base import Guardrails, Monitor
from adaptive_sampler.step_info import StepInfo


class ChangeMonitor(Monitor):
    """Fires when distance(summary(x̂0_prev), summary(x̂0_now)) <= threshold. Subclasses implement `distance`."""

    _current: torch.Tensor | None = None

    def summary(self, x0: torch.Tensor) -> torch.Tensor:
        """What is compared between steps (rows first); default x̂0 itself."""
        return x0

    def distance(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """Per-row change [rows] from `previous` to `current` summaries."""
        raise NotImplementedError

    def score(self, info: StepInfo) -> torch.Tensor:
        rows = info.sample_indices.tolist()
        x0 = info.x0
        score = torch.full((len(rows),), float("nan"), device=x0.device)
        prev_x0, has_prev = self.state.get("x0", rows)
        self._current = self.summary(x0)
        if prev_x0 is None or not bool(has_prev.any()):
            return score
        has_prev = has_prev.to(x0.device)
        prev_summary, has_summary = self.state.get("summary", rows)
        if prev_summary is None:
            prev = self.summary(prev_x0[has_prev])
        else:
            has_summary = has_summary.to(x0.device) & has_prev
            prev = prev_summary[has_prev].clone()
            missing = ~has_summary[has_prev]
            if bool(missing.any()):
                prev[missing] = self.summary(prev_x0[has_prev][missing]).to(prev.dtype)
        score[has_prev] = self.distance(prev, self._current[has_prev]).float()
        return score

    def observe(self, info: StepInfo, checked_step: bool) -> None:
        rows = info.sample_indices.tolist()
        self.state.put("x0", rows, info.x0.detach())
        current = self._current if checked_step else None
        self.state.put("summary", rows, None if current is None else current.detach())
        self._current = None


class X0L2(ChangeMonitor):
    """Relative L2 change ||x̂0_k - x̂0_{k-1}|| / ||x̂0_{k-1}|| of each sample."""

    name = "x0-l2"

    def distance(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        diff = (current.float() - previous.float()).flatten(1).norm(dim=1)
        return diff / previous.float().flatten(1).norm(dim=1).clamp_min(1e-12)


class SSIMChange(ChangeMonitor):
    """1 - SSIM(x̂0_{k-1}, x̂0_k) (Wang et al. 2004, piq's SSIM on x̂0 mapped to [0, 1])."""

    name = "ssim"

    def distance(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        ssim = piq.ssim(to_unit_range(previous), to_unit_range(current), data_range=1.0, reduction="none")
        return 1 - ssim


class HaarPSIChange(ChangeMonitor):
    """1 - HaarPSI(x̂0_{k-1}, x̂0_k) (Reisenhofer et al. 2018, piq's HaarPSI on x̂0 mapped to [0, 1])."""

    name = "haarpsi"

    def distance(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        return 1 - piq.haarpsi(to_unit_range(previous), to_unit_range(current), data_range=1.0, reduction="none")


class GMSDChange(ChangeMonitor):
    """GMSD(x̂0_{k-1}, x̂0_k), the gradient magnitude similarity deviation (Xue et al. 2014, piq; 0 = identical)."""

    name = "gmsd"

    def distance(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        return piq.gmsd(to_unit_range(previous), to_unit_range(current), data_range=1.0, reduction="none")


class FeatureChange(ChangeMonitor):
    """L2 distance between features of x̂0_{k-1} and x̂0_k in a feature space (default: the embedded Fashion-MNIST
    classifier's 128-d penultimate layer, the space of the project's FID)."""

    name = "features"

    def __init__(self, threshold: float, *, feature_extractor: FeatureExtractor | None = None,
                 guardrails: Guardrails | None = None, **guardrail_fields: int | None):
        super().__init__(threshold, guardrails=guardrails, **guardrail_fields)
        self.feature_extractor = feature_extractor

    def summary(self, x0: torch.Tensor) -> torch.Tensor:
        if self.feature_extractor is None:
            self.feature_extractor = EmbeddedFeatureExtractor(device=x0.device)
        return self.feature_extractor(x0.float()).float().to(x0.device)

    def distance(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        return (current - previous).norm(dim=1)


_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian_variance(x: torch.Tensor) -> torch.Tensor:
    """Variance of the (per-channel, 4-neighbour, valid) Laplacian of each image [n, C, H, W] -> [n]."""
    x = x.float()
    channels = x.shape[1]
    kernel = _LAPLACIAN.to(x.device).expand(channels, 1, 3, 3)
    return F.conv2d(x, kernel, groups=channels).flatten(1).var(dim=1)


class Sharpness(ChangeMonitor):
    """Fires on the plateau of the sharpness s = Var(Laplacian(x̂0)): |s_k - s_{k-1}| / s_{k-1} <= threshold.

    The variance of the Laplacian (Pech-Pacheco et al. 2000) rises with residual noise as well as with detail, so
    its size says nothing about being done; only its flattening out does.
    """

    name = "sharpness"

    def summary(self, x0: torch.Tensor) -> torch.Tensor:
        return laplacian_variance(x0)

    def distance(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        return (current - previous).abs() / previous.abs().clamp_min(1e-12)


CHANGE_MONITORS: Sequence[type[ChangeMonitor]] = (X0L2, SSIMChange, HaarPSIChange, GMSDChange, FeatureChange,
                                                   Sharpness)
