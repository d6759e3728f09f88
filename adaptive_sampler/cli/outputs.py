"""The output files of `sample` and `eval` (--save, --json, --out): checked before any work, written all-or-nothing.

`OutputPaths.check` runs before the model is loaded: every path must be a writable file in an existing folder, an
image path must end in a writable format, and no two outputs may be the same file (else `FieldError` naming its
field). `OutputPaths.write` writes every output's bytes through `atomic_write_files`: all of them appear or none.
"""

from __future__ import annotations

import io
import math
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from adaptive_sampler.atomic_write import AtomicWriteError, atomic_write_files
from adaptive_sampler.errors import FieldError

if TYPE_CHECKING:
    import torch

__all__ = ["IMAGE_FORMATS", "OutputPaths", "grid_bytes", "npy_bytes"]

# image extension -> Pillow format; all of them take the RGB grid that torchvision's save_image writes
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".gif": "GIF", ".tif": "TIFF",
                 ".tiff": "TIFF", ".webp": "WEBP"}


def _image_formats() -> dict[str, str]:
    from PIL import features

    return {ext: fmt for ext, fmt in IMAGE_FORMATS.items() if fmt != "WEBP" or features.check("webp")}


def npy_path(path: Path) -> Path:
    """Where `np.save(path, ...)` writes: `path` itself if it ends in .npy, else `path` + ".npy"."""
    return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")


def _check_path(field: str, path: Path) -> Path:
    """`path` if a file can be written there by a rename from a temporary file in its folder, else FieldError."""
    text = str(path)
    try:
        if path.name in ("", ".", "..") or path.is_dir():
            raise FieldError(field, text, "is a folder; give a file path")
        parent = path.parent
        if not parent.exists():
            raise FieldError(field, text, f"is in the folder {str(parent)!r}, which does not exist; create it first")
        if not parent.is_dir():
            raise FieldError(field, text, f"is under {str(parent)!r}, which is a file, not a folder")
        if path.exists() and not stat.S_ISREG(path.stat().st_mode):
            raise FieldError(field, text, "exists and is not a regular file (outputs replace a file by a rename)")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise FieldError(field, text, f"cannot be written: the folder {str(parent)!r} is not writable")
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")  # as the real write does
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise FieldError(field, text, f"cannot be written: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. an embedded NUL byte
        if isinstance(exc, FieldError):
            raise
        raise FieldError(field, text, f"is not a usable path: {exc}") from None
    return path


@dataclass(frozen=True)
class OutputPaths:
    """The checked output paths of one run, by field ("save", "json", "out"); a field not given is absent."""

    paths: Mapping[str, Path]

    @classmethod
    def check(cls, *, save: Path | None = None, json: Path | None = None, out: Path | None = None,
              save_latents: Path | None = None) -> OutputPaths:
        """Check every given path (see the module docstring); `save` and `save_latents` become the .npy paths
        np.save would use.

        Raises FieldError("save" | "json" | "out" | "save_latents", path, rule) for the first bad one.
        """
        paths: dict[str, Path] = {}
        if save is not None:
            paths["save"] = _check_path("save", npy_path(Path(save)))
        if save_latents is not None:
            paths["save_latents"] = _check_path("save_latents", npy_path(Path(save_latents)))
        if json is not None:
            paths["json"] = _check_path("json", Path(json))
        if out is not None:
            out = Path(out)
            formats = _image_formats()
            if out.suffix.lower() not in formats:
                shown = f"extension {out.suffix!r}" if out.suffix else "no extension"
                raise FieldError("out", str(out), f"has {shown}, which is not an image format this can write; "
                                                  f"use one of {', '.join(formats)}")
            paths["out"] = _check_path("out", out)
        seen: dict[Path, str] = {}
        for field, path in paths.items():
            key = Path(os.path.realpath(path))
            if key in seen:
                raise FieldError(field, str(path), f"is the same file as --{seen[key].replace('_', '-')}; give each "
                                                  "output its own path")
            seen[key] = field
        return cls(paths)

    def get(self, field: str) -> Path | None:
        return self.paths.get(field)

    def write(self, contents: Mapping[str, bytes]) -> None:
        """Write `contents` (field -> bytes, one entry per checked path) all or nothing; a failure (e.g. a full
        device) leaves no output behind and raises FieldError naming the field whose file could not be written."""
        files = {self.paths[field]: data for field, data in contents.items()}
        try:
            atomic_write_files(files)
        except AtomicWriteError as exc:
            field = next(f for f, p in self.paths.items() if p == exc.path)
            raise FieldError(field, str(exc.path), f"could not be written ({exc.strerror}); no output file was "
                                                   "written") from None


def npy_bytes(array: np.ndarray) -> bytes:
    """`array` in the .npy format, as `np.save` writes it."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def grid_bytes(samples: torch.Tensor, path: Path) -> bytes:
    """The samples (in [-1, 1]) as one image grid in the format of `path`'s extension."""
    from torchvision.utils import save_image

    buffer = io.BytesIO()
    try:
        save_image(samples[:, :3] * 0.5 + 0.5, buffer, format=_image_formats()[path.suffix.lower()],
                   nrow=max(1, math.ceil(math.sqrt(len(samples)))))
    except (OSError, ValueError) as exc:  # e.g. a grid larger than the format allows
        raise FieldError("out", str(path), f"could not be rendered ({exc}); no output file was written") from None
    return buffer.getvalue()
