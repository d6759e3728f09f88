"""Per-sample random streams: sample i of a run with seed s draws only from its own generator."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def sample_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator (the same noise on every device) for sample `index` (global) of a run with `seed`, hashed
    with NumPy's SeedSequence so that neighbouring (seed, index) pairs give unrelated streams."""
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def draw_noise(generators: Sequence[torch.Generator], shape: Sequence[int]) -> torch.Tensor:
    """One standard-normal draw of `shape` (one sample's) per generator, stacked on a new leading axis (float32,
    CPU)."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])
