"""Feature moments (mean, covariance) for FID, their files, and the shipped Fashion-MNIST references.

Two file layouts: the package's safetensors (`save`/`load`, with n) and pytorch-fid's `.npz` (`mu`, `sigma`), which
`adaptive-sampler stats` writes and `--reference` reads. `experiments/compute_reference_stats.py` writes the shipped
references (embedded features of the 10,000 test images and of the first 10,000 training images).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from adaptive_sampler.errors import FieldError
from adaptive_sampler.metrics.feature_net import Space

EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "embedded"
_FORMAT = "adaptive_sampler.FeatureStatistics"
_PREFIX = {"searched": "", "heldout": "heldout_"}  # file names of each embedded space's reference


def reference_statistics_path(split: Literal["test", "train"], space: Space = "searched") -> Path:
    """Where the shipped moments of `split` (test or train) in the embedded `space` live."""
    if split not in ("test", "train"):
        raise FieldError("split", split, "is not one of 'test', 'train'")
    return EMBEDDED_DIR / f"{_PREFIX[space]}reference_stats_{split}.safetensors"


def reference_features_path(space: Space = "searched") -> Path:
    """Where the shipped features of the Fashion-MNIST test images in the embedded `space` live."""
    return EMBEDDED_DIR / f"{_PREFIX[space]}reference_features_test.safetensors"


@dataclass(frozen=True)
class FeatureStatistics:
    """Mean [d] and unbiased covariance [d, d] (float64, CPU) of n feature vectors (None: not recorded)."""

    mean: torch.Tensor
    cov: torch.Tensor
    n: int | None

    def __post_init__(self) -> None:
        d = self.mean.shape[0] if self.mean.ndim == 1 else -1
        if d < 1:
            raise FieldError("mean", tuple(self.mean.shape), "is its shape; it must be [d]")
        if tuple(self.cov.shape) != (d, d):
            raise FieldError("cov", tuple(self.cov.shape),
                             f"is its shape; it must be [d, d] = [{d}, {d}] to match mean")
        if self.n is not None and self.n < 2:
            raise FieldError("n", self.n, "is below 2; a covariance needs at least two samples")

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    @classmethod
    def from_features(cls, features: torch.Tensor) -> FeatureStatistics:
        """Moments of features [n, d], as pytorch-fid computes them (divided by n - 1)."""
        if features.ndim != 2:
            raise FieldError("features", tuple(features.shape), "is its shape; it must be [n, d]")
        x = features.detach().to("cpu", torch.float64)
        return cls(mean=x.mean(0), cov=torch.cov(x.T).reshape(x.shape[1], x.shape[1]), n=x.shape[0])

    def save(self, path: Path | str) -> None:
        """Write as safetensors (`n` in the metadata; use `save_npz` when n is unknown)."""
        if self.n is None:
            raise FieldError("n", None, "is not recorded; the safetensors layout stores n, use save_npz")
        save_file(
            {"mean": self.mean.contiguous(), "cov": self.cov.contiguous()},
            str(path),
            metadata={"format": _FORMAT, "n": str(self.n)},
        )

    def npz_bytes(self) -> bytes:
        """The moments in pytorch-fid's layout: an `.npz` with float64 `mu` [d] and `sigma` [d, d]."""
        buffer = io.BytesIO()
        np.savez(buffer, mu=self.mean.numpy(), sigma=self.cov.numpy())
        return buffer.getvalue()

    def save_npz(self, path: Path | str) -> None:
        """Write `npz_bytes()` to `path`."""
        Path(path).write_bytes(self.npz_bytes())

    @classmethod
    def load_npz(cls, path: Path | str, field: str = "reference") -> FeatureStatistics:
        """Read pytorch-fid's `.npz` layout (other arrays are ignored); errors name `field`."""
        path = Path(path)
        if not path.is_file():
            raise FieldError(field, str(path), "does not exist; make one with `adaptive-sampler stats --images DIR "
                                               "--features BACKEND --out ref.npz`")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in ("mu", "sigma") if key in data.files}
                keys = list(data.files)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise FieldError(field, str(path), f"is not an .npz file of reference statistics ({exc})") from None
        if set(arrays) != {"mu", "sigma"}:
            raise FieldError(field, str(path), f"holds the arrays {keys}; reference statistics are pytorch-fid's "
                                               "layout, arrays 'mu' [d] and 'sigma' [d, d]")
        mu, sigma = arrays["mu"], arrays["sigma"]
        d = mu.shape[0] if mu.ndim == 1 else -1
        if d < 1 or sigma.shape != (d, d):
            raise FieldError(field, str(path), f"has mu of shape {mu.shape} and sigma of shape {sigma.shape}; they "
                                               "must be [d] and [d, d]")
        if not (np.issubdtype(mu.dtype, np.floating) and np.issubdtype(sigma.dtype, np.floating)):
            raise FieldError(field, str(path), f"has mu of dtype {mu.dtype} and sigma of dtype {sigma.dtype}; they "
                                               "must be floating point")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise FieldError(field, str(path), "holds NaN or Inf in mu or sigma")
        return cls(mean=torch.from_numpy(mu.astype(np.float64)), cov=torch.from_numpy(sigma.astype(np.float64)),
                   n=None)

    @classmethod
    def load(cls, path: Path | str) -> FeatureStatistics:
        """Read a file written by `save`."""
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        if metadata.get("format") != _FORMAT or "n" not in metadata:
            raise FieldError("path", str(path), f"has metadata {metadata}, not that of a saved FeatureStatistics")
        tensors = load_file(str(path))
        return cls(mean=tensors["mean"].double(), cov=tensors["cov"].double(), n=int(metadata["n"]))


def embedded_reference_statistics(split: Literal["test", "train"] = "test",
                                  space: Space = "searched") -> FeatureStatistics:
    """Shipped moments of Fashion-MNIST in an embedded feature space: all 10,000 `test` images or the first 10,000
    `train`.

    Args:
        split: test or train.
        space: searched or heldout (see `metrics.feature_net`).
    """
    return FeatureStatistics.load(reference_statistics_path(split, space))


def embedded_reference_features(space: Space = "searched") -> torch.Tensor:
    """Shipped features [10000, 128] of the Fashion-MNIST test images in an embedded space (for KID and
    precision-recall)."""
    return load_file(reference_features_path(space))["features"].float()
