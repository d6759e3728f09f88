"""Fidelity of a few-step sample to a many-step reference sampled from the same initial noise.

With η = 0 DDIM is a deterministic map from noise to image, so the many-step result is the target the few-step
result approximates; per-sample distances measure how far a schedule strays from it, with no reference set.
"""

from __future__ import annotations

from dataclasses import dataclass

import piq
import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.metrics.features import FeatureExtractor


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Images from the model range [-1, 1] to [0, 1] in float32, clamped: samplers clip x̂0 to [-1, 1], and the
    clamp absorbs round-off (and unclipped x̂0) that piq's range check would reject."""
    return ((images.detach().float() + 1) / 2).clamp(0, 1)


@dataclass(frozen=True)
class Fidelity:
    """Means over the n samples: PSNR in dB, SSIM, and (with a feature extractor) L2 feature distance."""

    psnr: float
    ssim: float
    feature_distance: float | None
    n: int


def fidelity(
    images: torch.Tensor, reference: torch.Tensor, feature_extractor: FeatureExtractor | None = None
) -> Fidelity:
    """Per-sample PSNR, SSIM (Wang et al. 2004) and feature L2 distance of images to reference, averaged.

    Both are [n, C, H, W] in [-1, 1], sample i of one from the same initial noise as sample i of the other.
    PSNR and SSIM use piq on [0, 1]; identical images give PSNR 80 dB (piq's 1e-8 floor on the MSE) and SSIM 1.
    """
    if images.ndim != 4:
        raise FieldError("images", tuple(images.shape), "is its shape; it must be [n, C, H, W]")
    if images.shape != reference.shape:
        raise FieldError(
            "reference", tuple(reference.shape), f"is its shape, which differs from the images' {tuple(images.shape)};"
            " pass the many-step result of the same initial noise for each sample"
        )
    x, y = to_unit_range(images), to_unit_range(reference).to(images.device)
    feature_distance = None
    if feature_extractor is not None:
        f_images = feature_extractor(images).float()
        f_reference = feature_extractor(reference).float().to(f_images.device)
        feature_distance = float((f_images - f_reference).norm(dim=1).mean())
    return Fidelity(
        psnr=float(piq.psnr(x, y, data_range=1.0)),
        ssim=float(piq.ssim(x, y, data_range=1.0)),
        feature_distance=feature_distance,
        n=images.shape[0],
    )
