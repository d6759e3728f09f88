"""Feature moments (mean, covariance) for FID, their safetensors files, and the shipped Fashion-MNIST references.

The shipped references are features of the embedded feature net (see `features.EmbeddedFeatureExtractor`) for
the 10,000 test images and for the first 10,000 training images; `experiments/compute_reference_stats.py`
writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from adaptive_sampler.errors import FieldError

EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "embedded"
REFERENCE_FEATURES_PATH = EMBEDDED_DIR / "reference_features_test.safetensors"
_FORMAT = "adaptive_sampler.FeatureStatistics"


def reference_statistics_path(split: Literal["test", "train"]) -> Path:
    """Where the shipped moments of `split` live."""
    if split not in ("test", "train"):
        raise FieldError("split", split, "is not one of 'test', 'train'")
    return EMBEDDED_DIR / f"reference_stats_{split}.safetensors"


@dataclass(frozen=True)
class FeatureStatistics:
    """Mean [d] and unbiased covariance [d, d] (float64, CPU) of n feature vectors."""

    mean: torch.Tensor
    cov: torch.Tensor
    n: int

    def __post_init__(self) -> None:
        d = self.mean.shape[0] if self.mean.ndim == 1 else -1
        if d < 1:
            raise FieldError("mean", tuple(self.mean.shape), "is its shape; it must be [d]")
        if tuple(self.cov.shape) != (d, d):
            raise FieldError("cov", tuple(self.cov.shape),
                             f"is its shape; it must be [d, d] = [{d}, {d}] to match mean")
        if self.n < 2:
            raise FieldError("n", self.n, "is below 2; a covariance needs at least two samples")

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    @classmethod
    def from_features(cls, features: torch.Tensor) -> FeatureStatistics:
        """Moments of features [n, d], as pytorch-fid computes them (np.cov, i.e. divided by n - 1)."""
        if features.ndim != 2:
            raise FieldError("features", tuple(features.shape), "is its shape; it must be [n, d]")
        x = features.detach().to("cpu", torch.float64)
        return cls(mean=x.mean(0), cov=torch.cov(x.T).reshape(x.shape[1], x.shape[1]), n=x.shape[0])

    def save(self, path: Path | str) -> None:
        """Write as safetensors (tensors `mean`, `cov`; `n` in the metadata)."""
        save_file(
            {"mean": self.mean.contiguous(), "cov": self.cov.contiguous()},
            str(path),
            metadata={"format": _FORMAT, "n": str(self.n)},
        )

    @classmethod
    def load(cls, path: Path | str) -> FeatureStatistics:
        """Read a file written by `save`."""
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        if metadata.get("format") != _FORMAT or "n" not in metadata:
            raise FieldError("path", str(path), f"has metadata {metadata}, not that of a saved FeatureStatistics")
        tensors = load_file(str(path))
        return cls(mean=tensors["mean"].double(), cov=tensors["cov"].double(), n=int(metadata["n"]))


def embedded_reference_statistics(split: Literal["test", "train"] = "test") -> FeatureStatistics:
    """Shipped embedded-feature moments of Fashion-MNIST: all 10,000 `test` images or the first 10,000 `train`."""
    return FeatureStatistics.load(reference_statistics_path(split))


def embedded_reference_features() -> torch.Tensor:
    """Shipped embedded features [10000, 128] of the Fashion-MNIST test images (stored float16; returned float32).

    KID and precision-recall need the feature set itself, not only its moments.
    """
    return load_file(REFERENCE_FEATURES_PATH)["features"].float()
