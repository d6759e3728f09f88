"""The embedded feature network: a small Fashion-MNIST classifier whose penultimate layer is the FID space
(Inception features fit MNIST-like data poorly). Inputs are images [n, 1, 32, 32] in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import nn

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
