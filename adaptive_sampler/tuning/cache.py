"""A content-keyed tensor cache on disk (safetensors) for costly results fully determined by a key: the fidelity
references and the DP initialiser's cost matrix.

A key is a JSON-able dict; its SHA-256 names the file, and the key itself is stored in the file's metadata and
checked on load. Writes are atomic, so concurrent workers computing the same entry only waste work.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from adaptive_sampler.atomic_write import atomic_write_bytes

DEFAULT_CACHE_DIR = Path("runs") / "cache"


def cached_tensors(
    cache_dir: Path | None, kind: str, key: Mapping[str, Any], compute: Callable[[], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """The tensors stored for (`kind`, `key`), computing and storing them first if absent. `cache_dir=None`
    disables the cache. A file whose stored key differs (a hash collision or a foreign file) is recomputed."""
    if cache_dir is None:
        return compute()
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))  # canonical: what is hashed and stored
    path = Path(cache_dir) / kind / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.safetensors"
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                stored = (f.metadata() or {}).get("key")
            if stored == text:
                return load_file(str(path))
        except (OSError, ValueError, RuntimeError):  # unreadable or truncated by an outside hand: recompute
            pass
    tensors = {name: t.detach().cpu().contiguous() for name, t in compute().items()}
    atomic_write_bytes(path, save(tensors, metadata={"key": text, "kind": kind}))
    return tensors
