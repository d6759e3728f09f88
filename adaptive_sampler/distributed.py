"""Sampling and evaluation sharded over the processes of a `torchrun` launch, bitwise equal to one process.

Every rank samples a contiguous shard of the global sample indices, so sample i still draws from its generator
(seed, i); results are gathered in rank order and rank 0 (`is_main`) writes the outputs. The process group (gloo
for a CPU model, nccl for a CUDA one) starts on the first collective and is destroyed at exit. Without torchrun
every function is the one-process one.
"""

from __future__ import annotations

import atexit
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from adaptive_sampler.errors import FieldError
from adaptive_sampler.sampler import NonFiniteOutputError, SampleResult, SamplingOptions
from adaptive_sampler.sampler import sample as sample_one_process

if TYPE_CHECKING:
    from adaptive_sampler.metrics.distribution import DistributionMetrics
    from adaptive_sampler.metrics.features import FeatureExtractor
    from adaptive_sampler.model_adapter import ModelAdapter
    from adaptive_sampler.planner import Planner

__all__ = ["Ranks", "bind_device", "close", "features", "gather_stopped_by", "is_main", "ranks", "sample", "score",
           "shard"]


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun launch."""

    rank: int
    world_size: int
    local_rank: int


def ranks() -> Ranks | None:
    """This process's rank, world size and local rank from torchrun's environment; None outside torchrun."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    return Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))


def is_main() -> bool:
    """True on rank 0 of a torchrun launch and in a plain process: the one that writes and prints."""
    here = ranks()
    return here is None or here.rank == 0


def shard(n: int, rank: int, world_size: int) -> range:
    """The sample indices of `rank` among `n`: contiguous, ceil(n / world_size) each (the last ranks may get fewer
    or none)."""
    size = math.ceil(n / world_size)
    return range(min(rank * size, n), min((rank + 1) * size, n))


def bind_device() -> None:
    """Under torchrun on a CUDA machine, make cuda:LOCAL_RANK the current device, so that `--device auto` or
    `cuda` puts each rank's model on its own GPU. Call it before loading the model (`python -m adaptive_sampler`
    does)."""
    here = ranks()
    if here is not None and torch.cuda.is_available():
        torch.cuda.set_device(here.local_rank % torch.cuda.device_count())


def _group(device: torch.device) -> Ranks:
    """The process group of this launch, started on first use: nccl for a CUDA model, gloo for a CPU one."""
    here = ranks()
    assert here is not None
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl":
            if device.index is not None and device.index != torch.cuda.current_device():
                raise FieldError("device", str(device), f"is not this rank's GPU (local rank {here.local_rank}); "
                                 "launch `torchrun ... -m adaptive_sampler`, which binds cuda:LOCAL_RANK, and pass "
                                 "--device auto or cuda")
            bind_device()
        dist.init_process_group(backend, rank=here.rank, world_size=here.world_size)
        atexit.register(close)
    return here


def close() -> None:
    """Destroy the process group if one was started (at exit; safe to call twice)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _gather(value: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def sample(model: ModelAdapter, plan: Sequence[int] | torch.Tensor | Planner, shape: Sequence[int], n: int,
           **kwargs: Any) -> SampleResult:
    """`sampler.sample` (same arguments) over the ranks of a torchrun launch; the plain one outside torchrun.

    Each rank samples its `shard` and every rank returns the whole result, in index order, bitwise the one-process
    samples, timesteps, NFE and rejections; `wall_s` is the launch's. Only rank 0 shows progress. A non-finite
    output raises the one-process NonFiniteOutputError on every rank (its `.partial`: every sample before the
    first bad batch); any other error on one rank is raised on every rank.

    Args:
        model: the network's adapter (its device picks the process group: nccl for CUDA, gloo for CPU).
        n: samples of the whole run.
        **kwargs: the other arguments of `sampler.sample` (`trace` is refused under torchrun).
    """
    here = ranks()
    if here is None:
        return sample_one_process(model, plan, shape, n, **kwargs)
    options = {k: v for k, v in kwargs.items() if k in SamplingOptions.model_fields}
    SamplingOptions(n=n, **options)  # bad input fails on every rank alike, before any collective
    if kwargs.get("trace"):
        raise FieldError("trace", True, "is not gathered across processes; trace a one-process run")
    kwargs["progress"] = bool(kwargs.get("progress")) and here.rank == 0
    offset = int(kwargs.pop("start", 0))  # a shard of a shard: samples offset … offset + n - 1
    _group(model.device)
    mine = shard(n, here.rank, here.world_size)
    start_time = time.perf_counter()
    error: BaseException | None = None
    status: tuple[str, ...] = ("ok",)
    local = SampleResult.join([], shape, 0.0)
    if len(mine):
        try:
            local = sample_one_process(model, plan, shape, len(mine), start=offset + mine.start, **kwargs)
        except NonFiniteOutputError as exc:
            error, local = exc, exc.partial
            status = ("non-finite", str(exc.step), str(exc.t), ",".join(map(str, exc.sample_indices)))
        except Exception as exc:  # told to the other ranks, then raised here unchanged
            error, status = exc, ("error", f"{type(exc).__name__}: {exc}")
    local.trace = None
    gathered = _gather((local, status))
    wall_s = time.perf_counter() - start_time
    failed = [r for r, (_, s) in enumerate(gathered) if s[0] != "ok"]
    if not failed:
        return SampleResult.join([part for part, _ in gathered], shape, wall_s)
    first, first_status = failed[0], gathered[failed[0]][1]
    if first_status[0] == "non-finite":  # the shards before `first` finished whole: one process's partial
        partial = SampleResult.join([part for part, _ in gathered[: first + 1]], shape, wall_s)
        raise NonFiniteOutputError(int(first_status[1]), int(first_status[2]),
                                   [int(i) for i in first_status[3].split(",")], partial)
    if error is not None and not isinstance(error, NonFiniteOutputError):
        raise error
    raise RuntimeError(f"rank {first} failed while sampling: {first_status[1]}")


def gather_stopped_by(stopped_by: dict[int, str]) -> dict[int, str]:
    """A monitor's `stopped_by` (global sample index -> the monitor that ended it) of every rank, merged; this
    process's outside torchrun."""
    if ranks() is None or not dist.is_initialized():
        return stopped_by
    merged: dict[int, str] = {}
    for part in _gather(stopped_by):
        merged.update(part)
    return merged


def features(samples: torch.Tensor, extractor: FeatureExtractor) -> torch.Tensor:
    """`extractor(samples)` over the ranks: its batches (`extractor.batch_size`, the ones one process runs) go
    round-robin to the ranks and are gathered in order, so the features are bitwise one process's; every rank
    returns all of them. Every rank holds all `samples`. Outside torchrun it is `extractor(samples)`."""
    here = ranks()
    if here is None:
        return extractor(samples)
    _group(samples.device)
    size = int(getattr(extractor, "batch_size", len(samples) or 1))
    mine = {start: extractor(samples[start : start + size])
            for start in range(0, len(samples), size)[here.rank :: here.world_size]}
    batches: dict[int, torch.Tensor] = {}
    for part in _gather(mine):
        batches.update(part)
    if not batches:
        return extractor(samples)
    return torch.cat([batches[start] for start in sorted(batches)])


def score(samples: torch.Tensor, bootstrap: int = 0, seed: int = 0) -> DistributionMetrics:
    """`metrics.evaluation.score_samples` over the ranks: the embedded `features` are extracted across the ranks
    and gathered; rank 0 computes FID/KID/precision/recall from them and shares them, so every rank returns the
    one-process metrics.

    Args:
        samples: every sample of the run, in [-1, 1].
        bootstrap: bootstrap resamples for confidence intervals (0: none), drawn with `seed`.
    """
    from adaptive_sampler.metrics.distribution import distribution_metrics
    from adaptive_sampler.metrics.evaluation import score_samples
    from adaptive_sampler.metrics.features import EmbeddedFeatureExtractor
    from adaptive_sampler.metrics.statistics import embedded_reference_features, embedded_reference_statistics

    here = ranks()
    if here is None:
        return score_samples(samples, bootstrap=bootstrap, seed=seed)
    gathered = features(samples, EmbeddedFeatureExtractor())  # the extractor and batches of score_samples
    metrics: list[DistributionMetrics | None] = [None]
    if here.rank == 0:
        metrics[0] = distribution_metrics(gathered, embedded_reference_features(),
                                          embedded_reference_statistics("test"), bootstrap=bootstrap, seed=seed)
    dist.broadcast_object_list(metrics, src=0)
    assert metrics[0] is not None
    return metrics[0]
