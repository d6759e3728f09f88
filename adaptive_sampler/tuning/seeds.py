"""The fixed sample sets a schedule is scored on (common random numbers).

Every evaluation of every trial draws the same initial noise (sample i of chunk j comes from the stream
(seed + j, i)), so differences between trials are differences between schedules, not between noise draws.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from adaptive_sampler.errors import FieldError


@dataclass(frozen=True)
class SeedSet:
    """A fixed set of samples, in chunks: chunk j holds `chunks[j]` samples drawn with seed `seed + j`."""

    seed: int
    chunks: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise FieldError("seed", self.seed, "is negative; seeds are non-negative integers")
        if not self.chunks or any(c < 1 for c in self.chunks):
            raise FieldError("chunks", self.chunks, "must be a non-empty list of positive sample counts")

    @property
    def n(self) -> int:
        return sum(self.chunks)

    @property
    def seeds(self) -> range:
        return range(self.seed, self.seed + len(self.chunks))

    @property
    def rungs(self) -> tuple[int, ...]:
        """Cumulative sample counts after each chunk: the steps a pruned study reports at."""
        return tuple(itertools.accumulate(self.chunks))

    @classmethod
    def split(cls, seed: int, n: int, parts: int, min_first: int = 1) -> SeedSet:
        """`n` samples, the first chunk drawn with `seed`, in up to `parts` near-equal chunks; fewer if the first
        chunk would hold less than `min_first`."""
        if n < 1:
            raise FieldError("n", n, "is not a positive number of samples")
        parts = max(1, min(parts, n // max(min_first, 1)))
        sizes = [n // parts + (1 if i < n % parts else 0) for i in range(parts)]
        return cls(seed, tuple(sizes))

    def overlaps(self, other: SeedSet) -> bool:
        """Whether the two sets share a seed (and so draw the same noise)."""
        return bool(set(self.seeds) & set(other.seeds))
