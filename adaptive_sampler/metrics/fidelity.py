"""Fidelity of a few-step sample to a many-step reference sampled from the same initial noise.

With η = 0 DDIM is a deterministic map from noise to image, so the many-step result is the target the few-step
result approximates; per-sample distances measure how far a schedule strays from it, with no reference set.
"""

from __future__ import annotations

from dataclasses import dataclass

import piq
import torch
from torch import nn

from adaptive_sampler.errors import FieldError
from adaptive_sampler.metrics.features import FeatureExtractor


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Images from the model range [-1, 1] to [0, 1] in float32, clamped (piq's range check rejects round-off).

    Args:
        images: [n, C, H, W] in [-1, 1].
    """
    return ((images.detach().float() + 1) / 2).clamp(0, 1)


SSIM_KERNEL = 11  # piq's SSIM window: images must be at least this many pixels wide


def _check_pair(images: torch.Tensor, reference: torch.Tensor) -> None:
    if images.ndim != 4:
        raise FieldError("images", tuple(images.shape), "is its shape; it must be [n, C, H, W]")
    if images.shape != reference.shape:
        raise FieldError(
            "reference", tuple(reference.shape), f"is its shape, which differs from the images' {tuple(images.shape)};"
            " pass the many-step result of the same initial noise for each sample"
        )


def fidelity_per_sample(images: torch.Tensor, reference: torch.Tensor,
                        lpips_model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Per-sample PSNR (dB), SSIM (images at least 11 pixels wide) and LPIPS of images to reference, as float64 CPU
    tensors [n].

    Args:
        images: [n, C, H, W] in [-1, 1].
        reference: the same shape, sample i of the same noise.
        lpips_model: an `lpips.LPIPS` (see `monitors.lpips_distance.build_lpips`), or None.
    """
    _check_pair(images, reference)
    x, y = to_unit_range(images), to_unit_range(reference).to(images.device)
    out = {"psnr": piq.psnr(x, y, data_range=1.0, reduction="none")}
    if min(x.shape[-2:]) >= SSIM_KERNEL:
        out["ssim"] = piq.ssim(x, y, data_range=1.0, reduction="none")
    if lpips_model is not None:
        def rgb(z: torch.Tensor) -> torch.Tensor:
            return z * 2 - 1 if z.shape[1] == 3 else (z * 2 - 1).expand(-1, 3, -1, -1)

        lpips_model.to(images.device)
        with torch.inference_mode():
            out["lpips"] = lpips_model(rgb(x), rgb(y)).flatten()
    return {name: value.detach().to("cpu", torch.float64) for name, value in out.items()}


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
    """Per-sample PSNR, SSIM and feature L2 distance of images to reference, averaged (identical images: 80 dB).

    Args:
        images: [n, C, H, W] in [-1, 1].
        reference: the same shape, sample i of the same noise.
        feature_extractor: the space of the feature distance (default: the embedded classifier's).
    """
    _check_pair(images, reference)
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
