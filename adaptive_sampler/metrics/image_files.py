"""Sets of real images on disk, read batch by batch in the model range [-1, 1], for `adaptive-sampler stats`.

A folder's image files (sorted, one size) stay one channel when all are grayscale, else are converted to RGB, as
clean-fid reads files. A .npy holds float images in [-1, 1] [n, C, H, W] or uint8 images 0-255.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adaptive_sampler.errors import FieldError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_GRAY_MODES = ("1", "L", "I", "I;16", "F")


@dataclass(frozen=True)
class ImageSet:
    """`n` images of `shape` (C, H, W) that `batches(size)` yields as float32 tensors in [-1, 1]."""

    source: str
    n: int
    shape: tuple[int, int, int]
    _files: tuple[Path, ...] = ()
    _array: np.ndarray | None = None

    def batches(self, size: int) -> Iterator[torch.Tensor]:
        for start in range(0, self.n, size):
            if self._array is not None:
                yield _array_to_model_range(self._array[start : start + size])
            else:
                yield torch.stack([_read_image(path, self.shape) for path in self._files[start : start + size]])


def _read_image(path: Path, shape: tuple[int, int, int]) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as image:
        values = np.asarray(image.convert("L" if shape[0] == 1 else "RGB"), dtype=np.float32)
    if values.ndim == 2:
        values = values[:, :, None]
    if values.shape[:2] != shape[1:]:
        raise FieldError("images", str(path), f"is {values.shape[1]}x{values.shape[0]} pixels; the other images are "
                                              f"{shape[2]}x{shape[1]} (all images of a set must share one size)")
    return torch.from_numpy(values).permute(2, 0, 1) / 127.5 - 1


def image_folder(folder: Path) -> ImageSet:
    """The images below `folder`, in sorted path order.

    Args:
        folder: a folder of image files of one size.
    """
    from PIL import Image, UnidentifiedImageError

    if not folder.is_dir():
        raise FieldError("images", str(folder), "is not a folder of images")
    files = tuple(sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()))
    if not files:
        raise FieldError("images", str(folder), f"holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    gray = True
    size = None
    for path in files:
        try:
            with Image.open(path) as image:
                gray = gray and image.mode in _GRAY_MODES
                if size is None:
                    size = image.size
        except (OSError, UnidentifiedImageError) as exc:
            raise FieldError("images", str(path), f"could not be read as an image ({exc})") from None
    assert size is not None
    return ImageSet(str(folder), len(files), (1 if gray else 3, size[1], size[0]), _files=files)


def _array_to_model_range(array: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.array(array))  # a copy: the batch of a read-only memory map
    if x.dtype == torch.uint8:
        if x.ndim == 3:
            x = x[:, None]
        elif x.shape[1] not in (1, 3):
            x = x.permute(0, 3, 1, 2)
        return x.float() / 127.5 - 1
    return x.float()


def npy_images(path: Path) -> ImageSet:
    """The images of a .npy file.

    Args:
        path: float images in [-1, 1] [n, C, H, W], or uint8 images [n, H, W], [n, C, H, W] or [n, H, W, C].
    """
    if not path.is_file():
        raise FieldError("npy", str(path), "does not exist")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise FieldError("npy", str(path), f"is not a .npy array ({exc})") from None
    rule = ("must be float images in [-1, 1] [n, C, H, W] (as `sample --save` writes) or uint8 images 0-255 "
            "[n, H, W], [n, C, H, W] or [n, H, W, C] with C = 1 or 3")
    if array.dtype == np.uint8 and array.ndim == 3:
        shape = (1, *array.shape[1:])
    elif array.dtype == np.uint8 and array.ndim == 4 and (array.shape[1] in (1, 3) or array.shape[-1] in (1, 3)):
        shape = tuple(array.shape[1:]) if array.shape[1] in (1, 3) else (array.shape[3], *array.shape[1:3])
    elif np.issubdtype(array.dtype, np.floating) and array.ndim == 4:
        shape = tuple(array.shape[1:])
        low, high = float(array.min()), float(array.max())
        if not (np.isfinite(low) and np.isfinite(high)) or low < -1.001 or high > 1.001:
            raise FieldError("npy", str(path), f"holds values in [{low:.4g}, {high:.4g}]; float images must lie in "
                                               "[-1, 1] (the model range; uint8 images may hold 0-255)")
    else:
        raise FieldError("npy", str(path), f"is a {array.dtype} array of shape {array.shape}; it {rule}")
    if array.shape[0] < 1:
        raise FieldError("npy", str(path), "holds no images")
    return ImageSet(str(path), int(array.shape[0]), (int(shape[0]), int(shape[1]), int(shape[2])), _array=array)
