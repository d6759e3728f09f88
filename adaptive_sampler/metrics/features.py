"""Feature extractors: images in [-1, 1] -> feature vectors [n, dim], the space FID/KID/precision-recall live in.

The shipped Fashion-MNIST classifiers (128-d; the searched space and the held-out one, see `feature_net`) and
pytorch-fid's InceptionV3 from a weights file the user supplies;
CLIP image features live in `clip`. Nothing here downloads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from piq.feature_extractors.fid_inception import FIDInceptionA, FIDInceptionC, FIDInceptionE1, FIDInceptionE2
from safetensors.torch import load_file
from torch import nn
from torchvision.models import inception_v3

from adaptive_sampler.errors import FieldError
from adaptive_sampler.metrics.feature_net import (
    EMBEDDED_IMAGE_SHAPE,
    FEATURE_DIM,
    SPACES,
    FashionFeatureNet,
    HeldoutFeatureNet,
    Space,
)
from adaptive_sampler.metrics.resize import check_images, clean_preprocess

EMBEDDED_FEATURE_NET = Path(__file__).resolve().parent.parent / "embedded" / "feature_net.safetensors"
HELDOUT_FEATURE_NET = EMBEDDED_FEATURE_NET.with_name("heldout_feature_net.safetensors")
FID_INCEPTION_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_INCEPTION_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_INCEPTION_FILENAME}"
INCEPTION_FEATURE_DIM = 2048
INCEPTION_SIZE = 299  # the input size of the FID Inception


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps images [n, C, H, W] in [-1, 1] to features [n, dim]."""

    dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def _batched_features(
    net: nn.Module, images: torch.Tensor, device: torch.device | None, batch_size: int
) -> torch.Tensor:
    device = device if device is not None else images.device
    net.to(device)
    with torch.inference_mode():
        return torch.cat(
            [net(images[i : i + batch_size].to(device, torch.float32)) for i in range(0, len(images), batch_size)]
        )


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise FieldError("batch_size", batch_size, "is not a positive integer")


def load_embedded_feature_net(space: Space = "searched") -> FashionFeatureNet | HeldoutFeatureNet:
    """A shipped Fashion-MNIST classifier, in eval mode on the CPU: the searched space's (94.05 % test accuracy) or
    the held-out space's (another architecture and seed, never used by a search or a calibration)."""
    if space not in SPACES:
        raise FieldError("space", space, f"is not one of {', '.join(SPACES)}")
    net = FashionFeatureNet() if space == "searched" else HeldoutFeatureNet()
    net.load_state_dict(load_file(EMBEDDED_FEATURE_NET if space == "searched" else HELDOUT_FEATURE_NET))
    return net.eval()


class _PenultimateFeatures(nn.Module):
    def __init__(self, net: FashionFeatureNet | HeldoutFeatureNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)


class EmbeddedFeatureExtractor:
    """Penultimate features (128-d) of a shipped classifier (`space`: searched or heldout) for images
    [n, 1, 32, 32] in [-1, 1], clamped first as saving them would; computed on `device` (default: the images')."""

    def __init__(self, device: torch.device | str | None = None, batch_size: int = 1000,
                 space: Space = "searched") -> None:
        _check_batch_size(batch_size)
        self.space = space
        self.dim = FEATURE_DIM
        self.device = torch.device(device) if device is not None else None
        self.batch_size = batch_size
        self._net = _PenultimateFeatures(load_embedded_feature_net(space))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or tuple(images.shape[1:]) != EMBEDDED_IMAGE_SHAPE:
            raise FieldError(
                "images", tuple(images.shape), "is its shape; it must be [n, 1, 32, 32]: the embedded feature net "
                "takes Fashion-MNIST-sized images in [-1, 1] (pad 28x28 with datasets.to_model_range)"
            )
        return _batched_features(self._net, images.clamp(-1, 1), self.device, self.batch_size)


def build_fid_inception_v3() -> nn.Module:
    """The FID InceptionV3 architecture of pytorch-fid, randomly initialised: piq's `fid_inception_v3` without its
    download (piq's constructor always downloads), with the keys of `pt_inception-2015-12-05-6726825d.pth`."""
    net = inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE1(1280)
    net.Mixed_7c = FIDInceptionE2(2048)
    return net


class _InceptionPool(nn.Module):
    """clean-fid's preprocessing, pytorch-fid's input scaling, then the 2048-d final average-pool features."""

    def __init__(self, inception: nn.Module) -> None:
        super().__init__()
        inception.fc = nn.Identity()  # the pool features are the FID space; the 1008-way logits are not used
        self.inception = inception.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = clean_preprocess(x, (INCEPTION_SIZE, INCEPTION_SIZE))
        return self.inception(values / 255 * 2 - 1)


class InceptionFeatureExtractor:
    """FID Inception pool features [n, 2048] of images [n, 1 or 3, H, W] in [-1, 1] (any H, W), from pytorch-fid's
    `pt_inception-2015-12-05-6726825d.pth` at `weights_path`; computed on `device` (default: the images')."""

    def __init__(
        self, weights_path: Path | str, device: torch.device | str | None = None, batch_size: int = 50
    ) -> None:
        _check_batch_size(batch_size)
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"weights_path: {path} does not exist. The FID Inception weights are pytorch-fid's "
                f"{FID_INCEPTION_FILENAME} from {FID_INCEPTION_URL}; download it on a machine with internet and "
                f"copy it to {path} (nothing is downloaded here)"
            )
        inception = build_fid_inception_v3()
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        try:
            inception.load_state_dict(state_dict)
        except (RuntimeError, TypeError, AttributeError) as e:
            raise FieldError(
                "weights_path", str(path), f"is not a state dict of the FID InceptionV3 ({FID_INCEPTION_FILENAME}): {e}"
            ) from e
        self.dim = INCEPTION_FEATURE_DIM
        self.device = torch.device(device) if device is not None else None
        self.batch_size = batch_size
        self._net = _InceptionPool(inception)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        return _batched_features(self._net, images, self.device, self.batch_size)
