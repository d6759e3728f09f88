"""The embedded feature networks: small Fashion-MNIST classifiers whose penultimate layers are FID spaces
(Inception features fit MNIST-like data poorly). Inputs are images [n, 1, 32, 32] in [-1, 1].

`FashionFeatureNet` is the *searched* space: tuning objectives and calibrations score in it. `HeldoutFeatureNet` is
the *held-out* space, another architecture trained apart with another seed, which no search or calibration ever
scores in, so that a list that fits the searched space rather than the images shows up there.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Space = Literal["searched", "heldout"]  # the embedded feature spaces: searches score in one, never in the other
SPACES: tuple[Space, ...] = ("searched", "heldout")
FEATURE_DIM = 128
EMBEDDED_IMAGE_SHAPE = (1, 32, 32)  # (channels, height, width) of the images the embedded feature net takes


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class FashionFeatureNet(nn.Module):
    """CNN classifier (32x32 -> 10 classes) with a FEATURE_DIM-wide penultimate layer."""

    def __init__(self, feature_dim: int = FEATURE_DIM, num_classes: int = 10) -> None:
        super().__init__()
        self.trunk = nn.Sequential(_conv_block(1, 32), _conv_block(32, 64), _conv_block(64, 128), nn.Flatten())
        self.embed = nn.Sequential(nn.Dropout(0.3), nn.Linear(128 * 4 * 4, feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations [n, feature_dim]."""
        return self.embed(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class HeldoutFeatureNet(nn.Module):
    """CNN classifier of another design than `FashionFeatureNet`: strided convolutions with GroupNorm and GELU, a
    5x5 stem and global average pooling (no max-pooling, no BatchNorm), FEATURE_DIM-wide penultimate layer."""

    def __init__(self, feature_dim: int = FEATURE_DIM, num_classes: int = 10) -> None:
        super().__init__()

        def conv(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2), nn.GroupNorm(8, c_out),
                    nn.GELU()]

        self.trunk = nn.Sequential(*conv(1, 16, kernel=5), *conv(16, 32, stride=2), *conv(32, 32),
                                   *conv(32, 64, stride=2), *conv(64, 128, stride=2), nn.AdaptiveAvgPool2d(1),
                                   nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(128, feature_dim), nn.GELU())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations [n, feature_dim]."""
        return self.embed(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

