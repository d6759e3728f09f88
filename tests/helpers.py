"""Builders shared by the tests: tiny randomly initialised UNets and the scheduler config they are sampled with.

Import them with `from helpers import ...` (pyproject's `[tool.pytest.ini_options] pythonpath` puts tests/ on the
path); the fixtures built from them live in conftest.py.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel, UNet2DModel

TINY_SHAPE = (1, 8, 8)


def build_tiny_unet(seed: int = 0, channels: int = 1) -> UNet2DModel:
    """An 8x8 UNet2DModel (a few thousand parameters), weights fixed by `seed`."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval().requires_grad_(False)


def tiny_scheduler_config() -> dict[str, Any]:
    """diffusers' default DDIM config: linear β 1e-4…0.02, ε-prediction, x̂0 clipped to [-1, 1]."""
    return dict(DDIMScheduler().config)


def build_tiny_conditional_unet(seed: int = 0) -> UNet2DConditionModel:
    """A 4-channel 8x8 UNet2DConditionModel with cross-attention on 16-wide embeddings, weights fixed by `seed`."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
    ).eval()
