"""The core loop: explicit (t, t_prev) pairs, a pluggable solver, per-sample randomness, batching, callbacks."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from adaptive_sampler.model_adapter import Conditioning, ModelAdapter
from adaptive_sampler.timesteps import validate_timesteps
from adaptive_sampler.seeding import draw_noise, sample_generator
from adaptive_sampler.solvers import DDIM, Solver, SolverState, StepSchedule
from adaptive_sampler.step_info import StepInfo

# A callback sees every step. It returns None/False to go on, True to stop every active sample now, or a bool
# tensor over the active rows marking the samples that are done. A stopped sample returns x̂0 of that step.
StepCallback = Callable[[StepInfo], "bool | torch.Tensor | None"]


class SamplingOptions(BaseModel):
    """How many samples, in what batches, from which seed, with which η (validated)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    n: int = Field(gt=0)
    batch_size: int = Field(64, gt=0)
    seed: int = Field(0, ge=0)
    eta: float = Field(0.0, ge=0.0, le=1.0)
    trace: bool = False


@dataclass
class SampleResult:
    """Samples in the model's output range, the timesteps walked, per-sample NFE, wall time, optional trace."""

    samples: torch.Tensor
    timesteps: torch.Tensor
    nfe: torch.Tensor
    wall_s: float
    trace: list[StepInfo] | None = None

    @property
    def nfe_mean(self) -> float:
        return float(self.nfe.double().mean()) if self.nfe.numel() else 0.0


class NonFiniteOutputError(RuntimeError):
    """The model produced NaN or Inf. `partial` holds the samples of the batches finished before it."""

    def __init__(self, step: int, t: int, sample_indices: list[int], partial: SampleResult) -> None:
        self.step, self.t, self.sample_indices, self.partial = step, t, sample_indices, partial
        shown = ", ".join(map(str, sample_indices[:10])) + (" …" if len(sample_indices) > 10 else "")
        super().__init__(
            f"model output is not finite at step {step} (t={t}) for samples [{shown}]; "
            f"{partial.samples.shape[0]} samples from earlier batches were finished and are kept in .partial"
        )


def _run_batch(
    model: ModelAdapter,
    solver: Solver,
    schedule: StepSchedule,
    indices: torch.Tensor,
    shape: Sequence[int],
    options: SamplingOptions,
    conditioning: Conditioning | None,
    callback: StepCallback | None,
    trace: list[StepInfo] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample the rows `indices`; returns (samples, nfe, first non-finite step per row or -1)."""
    device, dtype = model.device, model.dtype
    generators = [sample_generator(options.seed, int(i)) for i in indices]
    x = draw_noise(generators, shape).to(device=device, dtype=dtype)
    rows = len(indices)
    out = torch.empty_like(x)
    nfe = torch.zeros(rows, dtype=torch.int64, device=device)
    first_bad = torch.full((rows,), -1, dtype=torch.int64, device=device)
    active = torch.arange(rows, device=device)
    state = SolverState()
    for k in range(len(schedule.timesteps)):
        t_rows = schedule.timesteps[k].expand(len(active))
        t_prev_rows = schedule.t_prevs[k].expand(len(active))
        cond = conditioning.select(indices[active.cpu()]) if conditioning is not None else None
        pred = model(x, t_rows, cond)
        nfe[active] += 1
        bad = pred.nonfinite_rows()
        first_bad[active] = torch.where(bad & (first_bad[active] < 0), k, first_bad[active])
        noise = None
        if options.eta > 0:
            noise = draw_noise([generators[i] for i in active.tolist()], shape).to(device=device, dtype=dtype)
        x_next = solver.step(k, x, pred, schedule, state, noise)
        if callback is not None or trace is not None:
            info = StepInfo(k, t_rows, t_prev_rows, x, pred.x0, pred.eps, indices[active.cpu()])
            if trace is not None:
                trace.append(StepInfo(k, info.t.cpu(), info.t_prev.cpu(), x.cpu(), pred.x0.cpu(), pred.eps.cpu(),
                                      info.sample_indices))
            decision = callback(info) if callback is not None else None
            if decision is not None and decision is not False:
                done = (torch.ones(len(active), dtype=torch.bool, device=device) if decision is True
                        else decision.to(device=device, dtype=torch.bool))
                out[active[done]] = pred.x0[done]
                active, x_next = active[~done], x_next[~done]
                state.keep(~done)
        x = x_next
        if len(active) == 0:
            break
    # after the last pair (t_prev = -1, ᾱ = 1) x equals x̂0 of the last step
    out[active] = x
    return out, nfe, first_bad


@torch.inference_mode()
def sample(
    model: ModelAdapter,
    timesteps: Sequence[int] | torch.Tensor,
    shape: Sequence[int],
    n: int,
    *,
    batch_size: int = 64,
    seed: int = 0,
    eta: float = 0.0,
    conditioning: Conditioning | None = None,
    callback: StepCallback | None = None,
    trace: bool = False,
    progress: bool = False,
    solver: Solver | None = None,
) -> SampleResult:
    """Draw n samples of `shape` (C, H, W) with `solver` (default DDIM, Song et al. 2021) over the explicit list.

    Each consecutive pair (t, t_prev) is one step; the last step goes to t_prev = -1 (ᾱ = 1) and returns x̂0.
    Sample i draws its initial noise, then one η-noise per step, from its own generator seeded by (seed, i), so
    with the model's fixed `network_rows` it is bitwise identical on CPU whatever the batch size or composition.
    Raises NonFiniteOutputError (keeping the finished batches) if the model outputs NaN or Inf.
    """
    options = SamplingOptions(n=n, batch_size=batch_size, seed=seed, eta=eta, trace=trace)
    ts = validate_timesteps(timesteps, model.schedule.num_train_timesteps)
    solver = solver or DDIM()
    if options.eta > 0 and not solver.supports_eta:
        raise ValueError(f"eta: {options.eta} needs a stochastic solver; {solver.name!r} is deterministic (eta=0)")
    schedule = _step_schedule(model, ts, options.eta)
    steps_trace: list[StepInfo] | None = [] if options.trace else None
    samples, nfes = [], []
    start_time = time.perf_counter()
    starts = range(0, options.n, options.batch_size)
    for start in tqdm(starts, desc="sampling", unit="batch", disable=not progress):
        indices = torch.arange(start, min(start + options.batch_size, options.n))
        out, nfe, first_bad = _run_batch(model, solver, schedule, indices, shape, options, conditioning, callback,
                                         steps_trace)
        bad_rows = (first_bad >= 0).nonzero().flatten()  # one host sync per batch, not per step
        if len(bad_rows):
            step = int(first_bad[bad_rows].min())
            partial = _result(samples, nfes, ts, start_time, steps_trace, shape)
            raise NonFiniteOutputError(step, int(ts[step]), [int(indices[i]) for i in bad_rows.cpu()], partial)
        samples.append(out.float().cpu())
        nfes.append(nfe.cpu())
    return _result(samples, nfes, ts, start_time, steps_trace, shape)


def _step_schedule(model: ModelAdapter, ts: torch.Tensor, eta: float) -> StepSchedule:
    ts = ts.to(model.device)
    t_prevs = torch.cat([ts[1:], ts.new_full((1,), -1)])
    return StepSchedule(ts, t_prevs, model.schedule.alpha_bar(ts).to(model.dtype),
                        model.schedule.alpha_bar(t_prevs).to(model.dtype), eta)


def _result(samples: list[torch.Tensor], nfes: list[torch.Tensor], ts: torch.Tensor, start_time: float,
            trace: list[StepInfo] | None, shape: Sequence[int]) -> SampleResult:
    return SampleResult(
        samples=torch.cat(samples) if samples else torch.zeros((0, *shape)),
        timesteps=ts,
        nfe=torch.cat(nfes) if nfes else torch.zeros(0, dtype=torch.int64),
        wall_s=time.perf_counter() - start_time,
        trace=trace,
    )
