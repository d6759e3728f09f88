"""The per-sample loop of a dynamic policy: every sample sits at its own timestep, the network takes a t vector.

Each round evaluates every active sample once at its own t. The policy then accepts or rejects each sample's step;
an accepted sample moves its anchor there, a rejected one keeps its anchor and retries a smaller step from it. The
next point is the DDIM (η = 0) jump from the anchor's x̂0 and ε̂, so a sample's output is exactly DDIM over its
accepted timesteps: rejected evaluations cost NFE but leave no trace in the sample.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from adaptive_sampler.model_adapter import Conditioning, ModelAdapter
from adaptive_sampler.policies.step_size_control import DynamicPolicy, StepObservation
from adaptive_sampler.sampler import NonFiniteOutputError, SampleResult, SamplingOptions
from adaptive_sampler.seeding import draw_noise, sample_generator
from adaptive_sampler.solvers.ddim import ddim_step


@dataclass
class DynamicSampleResult:
    """Samples, each sample's accepted timesteps, its NFE (every evaluation, rejected ones included) and how many
    of those evaluations were rejected steps."""

    samples: torch.Tensor
    timesteps: list[list[int]]
    nfe: torch.Tensor
    rejected: torch.Tensor
    wall_s: float

    @property
    def nfe_mean(self) -> float:
        return float(self.nfe.double().mean()) if self.nfe.numel() else 0.0


@dataclass
class _Batch:
    samples: torch.Tensor
    timesteps: list[list[int]]
    nfe: torch.Tensor
    rejected: torch.Tensor


def _per_row(values: torch.Tensor, ndim: int) -> torch.Tensor:
    return values.view(-1, *([1] * (ndim - 1)))


def _run_batch(model: ModelAdapter, policy: DynamicPolicy, indices: torch.Tensor, shape: Sequence[int], seed: int,
               conditioning: Conditioning | None) -> _Batch:
    device, dtype, schedule = model.device, model.dtype, model.schedule
    x = draw_noise([sample_generator(seed, int(i)) for i in indices], shape).to(device=device, dtype=dtype)
    rows = len(indices)
    out = torch.empty_like(x)
    nfe = torch.zeros(rows, dtype=torch.int64)
    rejected = torch.zeros(rows, dtype=torch.int64)
    accepted: list[list[int]] = [[] for _ in range(rows)]
    active = torch.arange(rows)
    t = torch.full((rows,), schedule.num_train_timesteps - 1, dtype=torch.int64, device=device)
    anchor_t = anchor_x0 = anchor_eps = memory = None
    evaluation = 0
    while len(active):
        cond = conditioning.select(indices[active]) if conditioning is not None else None
        pred = model(x, t, cond)
        nfe[active] += 1
        bad = pred.nonfinite_rows()
        if bool(bad.any()):
            raise _NonFinite(evaluation, int(t[bad][0]), [int(indices[i]) for i in active[bad.cpu()]])
        decision = policy.decide(StepObservation(t, pred.x0, anchor_t, anchor_x0, memory), schedule)
        accept = decision.accept.to(device)
        if anchor_t is None:
            anchor_t, anchor_x0, anchor_eps = t, pred.x0, pred.eps
        else:
            keep_new = _per_row(accept, x.ndim)
            anchor_t = torch.where(accept, t, anchor_t)
            anchor_x0 = torch.where(keep_new, pred.x0, anchor_x0)
            anchor_eps = torch.where(keep_new, pred.eps, anchor_eps)
        accept_host = accept.cpu()  # `active` and the bookkeeping tensors live on the CPU
        rejected[active[~accept_host]] += 1
        for row, t_row in zip(active[accept_host].tolist(), t[accept].tolist(), strict=True):
            accepted[row].append(t_row)
        done = accept & (t == 0)
        going = ~done
        out[active[done.cpu()]] = pred.x0[done]
        active = active[going.cpu()]
        anchor_t, anchor_x0, anchor_eps = anchor_t[going], anchor_x0[going], anchor_eps[going]
        t, memory = decision.t_next.to(device)[going], decision.memory[going]
        if len(active) and not bool(((t >= 0) & (t < anchor_t)).all()):
            bad_row = int((~((t >= 0) & (t < anchor_t))).nonzero()[0])
            raise ValueError(f"t_next: policy {policy.name!r} chose {int(t[bad_row])} after accepted timestep "
                             f"{int(anchor_t[bad_row])}; it must lie in [0, {int(anchor_t[bad_row]) - 1}]")
        alpha_bar_from = _per_row(schedule.alpha_bar(anchor_t).to(dtype), x.ndim)
        alpha_bar_to = _per_row(schedule.alpha_bar(t).to(dtype), x.ndim)
        x = ddim_step(anchor_x0, anchor_eps, alpha_bar_from, alpha_bar_to, 0.0, None)
        evaluation += 1
    return _Batch(out, accepted, nfe, rejected)


class _NonFinite(Exception):
    def __init__(self, evaluation: int, t: int, sample_indices: list[int]) -> None:
        self.evaluation, self.t, self.sample_indices = evaluation, t, sample_indices


@torch.inference_mode()
def sample_dynamic(
    model: ModelAdapter,
    policy: DynamicPolicy,
    shape: Sequence[int],
    n: int,
    *,
    batch_size: int = 64,
    seed: int = 0,
    conditioning: Conditioning | None = None,
    progress: bool = False,
) -> DynamicSampleResult:
    """Draw n samples of `shape` with DDIM (η = 0), each sample walking the timesteps its dynamic policy picks.

    Sample i draws its initial noise from its own generator (seed, i); with the model's fixed `network_rows` it is
    bitwise identical whatever the batch size or its neighbours. Raises NonFiniteOutputError (keeping the finished
    batches) if the model outputs NaN or Inf.
    """
    options = SamplingOptions(n=n, batch_size=batch_size, seed=seed)
    batches: list[_Batch] = []
    start_time = time.perf_counter()
    for start in tqdm(range(0, options.n, options.batch_size), desc="sampling", unit="batch", disable=not progress):
        indices = torch.arange(start, min(start + options.batch_size, options.n))
        try:
            batches.append(_run_batch(model, policy, indices, shape, options.seed, conditioning))
        except _NonFinite as exc:
            partial = _result(batches, shape, start_time)
            kept = SampleResult(partial.samples, torch.zeros(0, dtype=torch.int64), partial.nfe, partial.wall_s)
            raise NonFiniteOutputError(exc.evaluation, exc.t, exc.sample_indices, kept) from None
    return _result(batches, shape, start_time)


def _result(batches: list[_Batch], shape: Sequence[int], start_time: float) -> DynamicSampleResult:
    if not batches:
        empty = torch.zeros(0, dtype=torch.int64)
        return DynamicSampleResult(torch.zeros((0, *shape)), [], empty, empty, time.perf_counter() - start_time)
    return DynamicSampleResult(
        samples=torch.cat([b.samples.float().cpu() for b in batches]),
        timesteps=[ts for b in batches for ts in b.timesteps],
        nfe=torch.cat([b.nfe for b in batches]),
        rejected=torch.cat([b.rejected for b in batches]),
        wall_s=time.perf_counter() - start_time,
    )
