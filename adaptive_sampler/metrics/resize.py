"""Images from the model range to a feature network's input, by clean-fid's "clean" convention.

FID depends on how images are quantised and resized (Parmar et al. 2022, arXiv:2104.11222), so images are quantised
to 8 bits, then each channel is resized on the values 0-255 with PIL's antialiased bicubic filter and clipped, with no
second quantisation. torch's antialiased bicubic in float64 matches PIL to ~3e-5 of a grey level and batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adaptive_sampler.errors import FieldError


def check_images(images: torch.Tensor, field: str = "images") -> None:
    """Refuse anything but images [n, C, H, W] with C = 1 (grayscale) or 3 (RGB); errors name `field`."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise FieldError(field, tuple(images.shape), "is its shape; it must be [n, 1 or 3, H, W]: grayscale or RGB "
                                                     "images in [-1, 1]")


def quantize_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as the 8-bit values 0-255 (float32) a PNG of them holds: round((x + 1) / 2 · 255).

    Args:
        images: [n, C, H, W] in [-1, 1].
    """
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round()


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Grayscale [n, 1, H, W] repeated to three channels (as PIL's convert("RGB")); RGB unchanged."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def clean_resize(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Values 0-255 resized per channel with PIL's bicubic filter, clipped to [0, 255] (float32).

    Args:
        values: [n, C, H, W] in 0-255.
        size: (H, W).
    """
    if tuple(values.shape[-2:]) == tuple(size):
        return values.float()
    resized = F.interpolate(values.double(), size=size, mode="bicubic", antialias=True, align_corners=False)
    return resized.clamp(0, 255).float()


def clean_preprocess(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Images in [-1, 1] -> RGB values 0-255 at `size`: quantised, then clean-resized.

    Args:
        images: [n, 1 or 3, H, W] in [-1, 1].
        size: (H, W).
    """
    check_images(images)
    return clean_resize(to_rgb(quantize_uint8(images)), size)
