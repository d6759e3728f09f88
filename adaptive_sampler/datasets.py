"""Fashion-MNIST from its four idx files (Debian package `dataset-fashion-mnist` or a user path)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from adaptive_sampler.errors import FieldError

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {directory}: install the Debian package "
        "`dataset-fashion-mnist` (apt-get install -y dataset-fashion-mnist) or pass the folder "
        "that holds the four idx files"
    )


def load_fashion_mnist(split: str, data_dir: Path | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 28, 28], labels uint8 [n]) of the `train` or `test` split from the idx files in
    `data_dir` (default: DEFAULT_FASHION_MNIST_DIR)."""
    if split not in ("train", "test"):
        raise FieldError("split", split, "is not one of 'train', 'test'")
    directory = Path(data_dir) if data_dir is not None else DEFAULT_FASHION_MNIST_DIR
    images = _read_idx(_find(directory, _FILES[(split, "images")]))
    labels = _read_idx(_find(directory, _FILES[(split, "labels")]))
    return images, labels


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 [n, 28, 28] -> float32 [n, 1, 32, 32] in [-1, 1], zero-padded (-1) to 32x32 as the DDPM expects."""
    x = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0).unsqueeze(1)
    return torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
