"""A dynamic-programming initialiser: the best N-step subset of a coarse timestep grid, for every N at once.

After GITS (arXiv:2405.11326) and OSS (arXiv:2503.21774): cost[i][j] is the RMS error of one DDIM jump from the
reference state at grid timestep g_i to g_j, against the reference state at g_j (a few many-step trajectories); one
DP gives the cheapest path T-1 = g_0 > … > end with exactly N jumps for every N. It seeds the search as a warm
start; the local errors are DDIM's whatever the tuned solver.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.model_adapter import ModelAdapter
from adaptive_sampler.models import LoadedModel
from adaptive_sampler.policies import Uniform
from adaptive_sampler.sampler import sample
from adaptive_sampler.solvers import ddim_step
from adaptive_sampler.tuning.cache import DEFAULT_CACHE_DIR, cached_tensors
from adaptive_sampler.tuning.evaluator import model_identity


@dataclass(frozen=True)
class DPPath:
    """The cheapest path with `steps` jumps from node 0 to the last node: the nodes it visits and its total cost."""

    steps: int
    nodes: tuple[int, ...]
    cost: float


def best_paths(cost: np.ndarray, max_steps: int | None = None) -> dict[int, DPPath]:
    """For every n = 1 … `max_steps`, the path 0 = v_0 < v_1 < … < v_n = M-1 minimising Σ cost[v_k, v_{k+1}].

    `cost` is [M, M]; only entries above the diagonal (i < j) are used, and inf marks a forbidden jump. Returns the
    step counts that have a finite path (n ≤ M-1). O(max_steps · M²) time, one pass for all n.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1] or cost.shape[0] < 2:
        raise ValueError(f"cost: shape {cost.shape} is not a square matrix [M, M] with M >= 2")
    if np.isnan(cost).any():
        raise ValueError("cost: contains NaN; use inf for forbidden jumps")
    m = cost.shape[0]
    max_steps = m - 1 if max_steps is None else max_steps
    if max_steps < 1:
        raise FieldError("max_steps", max_steps, "is not a positive step count")
    upper = np.where(np.triu(np.ones((m, m), dtype=bool), k=1), cost, np.inf)
    best = np.full(m, np.inf)
    best[0] = 0.0
    parents: list[np.ndarray] = []
    paths: dict[int, DPPath] = {}
    for n in range(1, min(max_steps, m - 1) + 1):
        candidates = best[:, None] + upper  # candidates[i, j]: reach i in n-1 jumps, then jump i -> j
        parent = candidates.argmin(axis=0)
        best = candidates[parent, np.arange(m)]
        parents.append(parent)
        if np.isfinite(best[-1]):
            nodes = [m - 1]
            for k in range(n - 1, -1, -1):
                nodes.append(int(parents[k][nodes[-1]]))
            paths[n] = DPPath(steps=n, nodes=tuple(reversed(nodes)), cost=float(best[-1]))
    return paths


@dataclass(frozen=True)
class CostMatrix:
    """Jump costs between the nodes of a grid: nodes 0 … G-1 are the grid timesteps (descending from T-1), node G
    is the end of sampling (t_prev = -1)."""

    grid: torch.Tensor
    cost: np.ndarray

    def schedules(self, steps: list[int] | tuple[int, ...]) -> dict[int, torch.Tensor]:
        """The DP-optimal N-step timestep list for each N in `steps` that the grid allows (N ≤ G)."""
        wanted = [n for n in steps if 1 <= n <= len(self.grid)]
        if not wanted:
            return {}
        paths = best_paths(self.cost, max(wanted))
        return {n: self.grid[list(paths[n].nodes[:-1])].clone() for n in wanted if n in paths}


def build_cost_matrix(
    model: LoadedModel,
    *,
    grid_size: int = 50,
    fine_steps: int = 200,
    n: int = 8,
    seed: int = 0,
    adapter: ModelAdapter | None = None,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
) -> CostMatrix:
    """The cost matrix of a uniform grid of `grid_size` timesteps (T-1 … 0), from `n` reference trajectories of
    the union of the grid and `fine_steps` uniform DDIM steps (samples 0 … n-1 of `seed`). Cached on disk."""
    adapter = adapter or model.adapter()
    schedule = adapter.schedule
    T = schedule.num_train_timesteps
    if not 2 <= grid_size <= T:
        raise FieldError("grid_size", grid_size, f"is outside [2, {T}] (the training timesteps)")
    if n < 1:
        raise FieldError("n", n, "is not a positive number of reference trajectories")
    grid = Uniform().timesteps(grid_size, schedule)
    fine = torch.unique(torch.cat([grid, Uniform().timesteps(min(max(fine_steps, grid_size), T), schedule)])).flip(0)

    def compute() -> dict[str, torch.Tensor]:
        result = sample(adapter, fine, model.sample_shape, n, batch_size=n, seed=seed, trace=True,
                        conditioning=model.conditioning)
        trace = {int(info.t[0]): info for info in result.trace or []}
        states = torch.stack([trace[int(t)].x_t for t in grid] + [result.samples]).double()  # [G+1, n, ...]
        x0 = torch.stack([trace[int(t)].x0 for t in grid]).double()
        eps = torch.stack([trace[int(t)].eps for t in grid]).double()
        alpha = schedule.alpha_bar(torch.cat([grid, grid.new_full((1,), -1)])).double()
        g = len(grid)
        cost = torch.full((g + 1, g + 1), float("inf"), dtype=torch.float64)
        shape = (-1,) + (1,) * states[0].ndim
        for i in range(g):
            targets = alpha[i + 1 :].view(shape)
            jumped = ddim_step(x0[i], eps[i], alpha[i], targets, 0.0, None)  # [G-i, n, ...]
            rms = (jumped - states[i + 1 :]).flatten(2).pow(2).mean(2).sqrt()
            cost[i, i + 1 :] = rms.mean(1)
        return {"cost": cost, "grid": grid}

    key = {"model": model_identity(model), "grid_size": grid_size, "fine_steps": len(fine), "n": n, "seed": seed,
           "num_train_timesteps": T, "jump": "ddim"}
    tensors = cached_tensors(cache_dir, "dp-cost", key, compute)
    return CostMatrix(grid=tensors["grid"].long(), cost=tensors["cost"].numpy())
