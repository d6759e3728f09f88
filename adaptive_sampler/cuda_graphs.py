"""Replay the network as CUDA graphs: one graph per call shape (a row bucket or a fixed chunk), on static buffers.

At small batches the GPU waits for the Python that launches a step's many small kernels; a graph replays them in
one call. Capture needs the fixed shapes of the `buckets` and `fixed:N` row policies; the static output is cloned
because the next replay overwrites it and the sampler keeps ε̂ across steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor
    t: torch.Tensor
    kwargs: dict[str, torch.Tensor]
    out: torch.Tensor


class CudaGraphs:
    """`network(x, t, **kwargs) -> Tensor` on CUDA, captured once per shape of (x, t, kwargs), replayed after."""

    WARMUP_CALLS = 2  # eager calls on a side stream before capture: cuDNN/cuBLAS pick kernels, lazy state settles

    def __init__(self, network: Callable[..., torch.Tensor]) -> None:
        self.network = network
        self.graphs: dict[tuple[Any, ...], _Graph] = {}
        self._pool: Any = None  # one memory pool for all graphs: they never run at the same time

    def __call__(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
        key = (x.shape, x.dtype, t.shape, t.dtype, tuple((k, v.shape, v.dtype) for k, v in sorted(kwargs.items())))
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(x, t, kwargs)
        entry.x.copy_(x)
        entry.t.copy_(t)
        for name, value in kwargs.items():
            entry.kwargs[name].copy_(value)
        entry.graph.replay()
        return entry.out.clone()

    def _capture(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, torch.Tensor]) -> _Graph:
        static_x, static_t = x.clone(), t.clone()
        static_kwargs = {k: v.clone() for k, v in kwargs.items()}
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP_CALLS):
                self.network(static_x, static_t, **static_kwargs)
        torch.cuda.current_stream(x.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self.network(static_x, static_t, **static_kwargs)
        return _Graph(graph, static_x, static_t, static_kwargs, out)
