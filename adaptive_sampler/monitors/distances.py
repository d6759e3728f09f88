"""Distances between x̂0 of consecutive steps, the plug-ins of `ChangeMonitor`: pixels, structure, features, sharpness.

Each is registered by name in `DISTANCES`; `make_distance(name, **options)` builds one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import piq
import torch
import torch.nn.functional as F

from adaptive_sampler.errors import FieldError
from adaptive_sampler.metrics.features import EmbeddedFeatureExtractor, FeatureExtractor
from adaptive_sampler.metrics.fidelity import to_unit_range
from adaptive_sampler.monitors.lpips_distance import build_lpips


class Distance(ABC):
    """Per-row change between two summaries of x̂0 (0 = no change); see the module docstring."""

    name: ClassVar[str] = "distance"

    def summary(self, x0: torch.Tensor) -> torch.Tensor:
        """What is compared between steps (rows first); default x̂0 itself."""
        return x0

    @abstractmethod
    def __call__(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """Per-row change [rows] from `previous` to `current` summaries."""


class RelativeL2(Distance):
    """Relative L2 change ||x̂0_k - x̂0_{k-1}|| / ||x̂0_{k-1}|| of each row."""

    name = "l2"

    def __call__(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        diff = (current.float() - previous.float()).flatten(1).norm(dim=1)
        return diff / previous.float().flatten(1).norm(dim=1).clamp_min(1e-12)


class SSIM(Distance):
    """1 - SSIM(x̂0_{k-1}, x̂0_k) (Wang et al. 2004, piq's SSIM on x̂0 mapped to [0, 1])."""

    name = "ssim"

    def __call__(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        return 1 - piq.ssim(to_unit_range(previous), to_unit_range(current), data_range=1.0, reduction="none")


class HaarPSI(Distance):
    """1 - HaarPSI(x̂0_{k-1}, x̂0_k) (Reisenhofer et al. 2018, piq's HaarPSI on x̂0 mapped to [0, 1])."""

    name = "haarpsi"

    def __call__(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        return 1 - piq.haarpsi(to_unit_range(previous), to_unit_range(current), data_range=1.0, reduction="none")


class GMSD(Distance):
    """GMSD(x̂0_{k-1}, x̂0_k), the gradient magnitude similarity deviation (Xue et al. 2014, piq; 0 = identical)."""

    name = "gmsd"

    def __call__(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        return piq.gmsd(to_unit_range(previous), to_unit_range(current), data_range=1.0, reduction="none")


class Features(Distance):
    """L2 distance between features of x̂0_{k-1} and x̂0_k in a feature space (default: the embedded Fashion-MNIST
    classifier's 128-d penultimate layer, the space of the project's FID; built on first use)."""

    name = "features"

    def __init__(self, feature_extractor: FeatureExtractor | None = None) -> None:
        self.feature_extractor = feature_extractor

    def summary(self, x0: torch.Tensor) -> torch.Tensor:
        if self.feature_extractor is None:
            self.feature_extractor = EmbeddedFeatureExtractor(device=x0.device)
        return self.feature_extractor(x0.float()).float().to(x0.device)

    def __call__(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        return (current - previous).norm(dim=1)


_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """The (per-channel, 4-neighbour, valid) Laplacian of each image [n, C, H, W] -> [n, C, H - 2, W - 2]."""
    x = x.float()
    channels = x.shape[1]
    kernel = _LAPLACIAN.to(x.device).expand(channels, 1, 3, 3)
    return F.conv2d(x, kernel, groups=channels)


def laplacian_variance(x: torch.Tensor) -> torch.Tensor:
    """Variance of the Laplacian of each image [n, C, H, W] -> [n], the classic sharpness number (Pech-Pacheco et
    al. 2000).

    Args:
        x: the images.
    """
    return laplacian(x).flatten(1).var(dim=1)


class Sharpness(RelativeL2):
    """Relative L2 change of the Laplacian L of x̂0 (its edges and fine detail): small once the detail stops moving.

    Not the change of Var(L(x̂0)): that number turns while x̂0 sheds noise (a false plateau) and never settles
    (docs/experiments.md).
    """

    name = "sharpness"

    def summary(self, x0: torch.Tensor) -> torch.Tensor:
        return laplacian(x0)


class LPIPS(Distance):
    """LPIPS(x̂0_{k-1}, x̂0_k) (Zhang et al. 2018) on x̂0 clamped to [-1, 1], grayscale repeated to RGB.

    The network is built from local files when the distance is made, so missing weights fail before sampling.

    Args:
        net: the backbone: alex, vgg or squeeze.
        random_backbone: an untrained backbone, for tests that say so (its scores are not perceptual).
    """

    name = "lpips"

    def __init__(self, net: str = "alex", *, random_backbone: bool = False) -> None:
        self.net_name = net
        self.random_backbone = random_backbone
        self.model = build_lpips(net, random_backbone=random_backbone)

    @staticmethod
    def _rgb(x: torch.Tensor) -> torch.Tensor:
        x = x.float().clamp(-1, 1)
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    def __call__(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        self.model.to(current.device)
        with torch.inference_mode():
            return self.model(self._rgb(previous), self._rgb(current)).flatten()


DISTANCES: dict[str, Callable[..., Distance]] = {
    "l2": RelativeL2, "ssim": SSIM, "haarpsi": HaarPSI, "gmsd": GMSD, "features": Features, "lpips": LPIPS,
    "sharpness": Sharpness,
}


def make_distance(name: str, **options: Any) -> Distance:
    """The distance registered as `name`.

    Args:
        name: one of `DISTANCES`.
        **options: the distance's own keywords (e.g. net="vgg" for lpips).
    """
    if name not in DISTANCES:
        raise FieldError("distance", name, f"is not one of {', '.join(map(repr, DISTANCES))}")
    return DISTANCES[name](**options)
