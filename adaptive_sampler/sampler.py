"""The one sampling loop: every active row carries its own t and next t; a planner, a solver and a monitor plug in.

Each iteration evaluates the network once on every active row at its own t; the planner accepts or rejects each
row's step and picks its next timestep, and a monitor ends or steers rows through it (see `planner`, `finish`).
The solver steps from the last accepted point, so a rejected evaluation costs NFE but leaves no trace in the sample.
NFE counts evaluations (steps); `evals` counts the rows a sample sent through the network: 2 for a guided step
(conditional + unconditional), 1 otherwise, rejected steps included.
Rows that reach -1 leave the batch, and every per-row tensor is compacted with them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from adaptive_sampler.errors import FieldError
from adaptive_sampler.finish import DEFAULT_FINISH, Finish, FinishingPlan
from adaptive_sampler.model_adapter import Conditioning, ModelAdapter
from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.planner import (
    Planner,
    StaticPlan,
    Steerable,
    StepDecision,
    StepObservation,
    steering_error,
)
from adaptive_sampler.seeding import draw_noise, sample_generator
from adaptive_sampler.solvers import DDIM, Point, Solver, SolverState
from adaptive_sampler.step_info import StepInfo

# A monitor sees every step and returns a MonitorDecision (`done`, optional `step_factor` and `no_tail`), a bool
# tensor over the active rows marking done samples, True to end every active sample, or None/False to go on. Its
# optional `reset()` runs at the start of every batch, `keep(rows)` whenever rows leave the batch.
StepMonitor = Callable[[StepInfo], object]


class SamplingOptions(BaseModel):
    """How many samples, in what batches, from which seed, with which η (validated)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    n: int = Field(gt=0)
    batch_size: int = Field(64, gt=0)
    seed: int = Field(0, ge=0)
    start: int = Field(0, ge=0)
    eta: float = Field(0.0, ge=0.0, le=1.0)
    trace: bool = False


@dataclass
class SampleResult:
    """Samples in the model's output range, and per sample: its accepted timesteps, its NFE (every evaluation,
    rejected ones included), how many of those were rejected steps, and its network evaluations
    (`evals_per_sample`: the rows it sent through the network, 2 per guided step and 1 per unguided one, rejected
    ones included; equal to NFE without guidance); wall time; the optional trace."""

    samples: torch.Tensor
    timesteps: list[list[int]]
    nfe: torch.Tensor
    rejected: torch.Tensor
    evals_per_sample: torch.Tensor
    wall_s: float
    trace: list[StepInfo] | None = None

    @property
    def nfe_mean(self) -> float:
        return float(self.nfe.double().mean()) if self.nfe.numel() else 0.0

    @property
    def evals_mean(self) -> float:
        """The mean network evaluations per sample (the cost of a guided run; NFE counts its steps)."""
        return float(self.evals_per_sample.double().mean()) if self.evals_per_sample.numel() else 0.0

    @classmethod
    def join(cls, parts: Sequence[SampleResult | _Batch], shape: Sequence[int], wall_s: float,
             trace: list[StepInfo] | None = None) -> SampleResult:
        """The parts (batches of one run, or shards of several processes) in order, as one result on the CPU."""
        empty = torch.zeros(0, dtype=torch.int64)
        return cls(
            samples=torch.cat([p.samples.float().cpu() for p in parts]) if parts else torch.zeros((0, *shape)),
            timesteps=[ts for p in parts for ts in p.timesteps],
            nfe=torch.cat([p.nfe for p in parts]) if parts else empty,
            rejected=torch.cat([p.rejected for p in parts]) if parts else empty,
            evals_per_sample=torch.cat([p.evals_per_sample for p in parts]) if parts else empty,
            wall_s=wall_s,
            trace=trace,
        )


class NonFiniteOutputError(RuntimeError):
    """The model produced NaN or Inf. `partial` holds the samples of the batches finished before it."""

    def __init__(self, step: int, t: int | float, sample_indices: list[int], partial: SampleResult) -> None:
        self.step, self.t, self.sample_indices, self.partial = step, t, sample_indices, partial
        shown = ", ".join(map(str, sample_indices[:10])) + (" …" if len(sample_indices) > 10 else "")
        super().__init__(
            f"model output is not finite at step {step} (t={t}) for samples [{shown}]; "
            f"{partial.samples.shape[0]} samples from earlier batches were finished and are kept in .partial"
        )


@dataclass
class _Batch:
    samples: torch.Tensor
    timesteps: list[list[int]]
    nfe: torch.Tensor
    rejected: torch.Tensor
    evals_per_sample: torch.Tensor
    first_bad: torch.Tensor  # per row: the first evaluation with a non-finite output, or -1
    bad_t: torch.Tensor  # per row: its timestep there


def _per_row(values: torch.Tensor, ndim: int) -> torch.Tensor:
    return values.view(-1, *([1] * (ndim - 1)))


def _done_mask(decision: object, rows: int, device: torch.device) -> torch.Tensor | None:
    done = getattr(decision, "done", decision)
    if done is None or done is False:
        return None
    if done is True:
        return torch.ones(rows, dtype=torch.bool, device=device)
    if not isinstance(done, torch.Tensor):
        raise TypeError(f"monitor: returned {done!r}; return a MonitorDecision, a bool tensor over the rows, True or "
                        "None")
    return done.to(device=device, dtype=torch.bool)


def _after_monitor(verdict: object, planner: Planner, observation: StepObservation, decision: StepDecision,
                   schedule: NoiseSchedule) -> StepDecision:
    """The planner's decision once the monitor has judged the step: a `step_factor` steers the rows' next steps;
    done rows end, at once (to -1, returning x̂0) or by starting their tail (`FinishingPlan`)."""
    device = decision.t_next.device
    factor = getattr(verdict, "step_factor", None)
    if factor is not None:
        if not isinstance(planner, Steerable):
            raise steering_error(planner)
        decision = planner.steer(observation, decision, factor.to(device), schedule)
        decision = replace(decision, t_next=decision.t_next.to(device))
    done = _done_mask(verdict, len(observation.t), device)
    if done is None:
        return decision
    if isinstance(planner, FinishingPlan):
        no_tail = getattr(verdict, "no_tail", None)
        return planner.finish(done, observation.t, decision, None if no_tail is None else no_tail.to(device),
                              schedule)
    return replace(decision, accept=decision.accept | done, t_next=torch.where(done, -1, decision.t_next))


def _run_batch(model: ModelAdapter, planner: Planner, solver: Solver, indices: torch.Tensor, shape: Sequence[int],
               options: SamplingOptions, conditioning: Conditioning | None, monitor: StepMonitor | None,
               trace: list[StepInfo] | None, noise: torch.Tensor | None) -> _Batch:
    device, dtype, schedule = model.device, model.dtype, model.schedule
    generators = [sample_generator(options.seed, int(i)) for i in indices]
    x = (draw_noise(generators, shape) if noise is None else noise).to(device=device, dtype=dtype)
    rows = len(indices)
    out = torch.empty_like(x)
    nfe = torch.zeros(rows, dtype=torch.int64, device=device)
    rejected = torch.zeros_like(nfe)
    evals = torch.zeros_like(nfe)  # rows through the network: 2 per guided evaluation
    first_bad = torch.full_like(nfe, -1)
    active, active_host = torch.arange(rows, device=device), torch.arange(rows)
    cond = conditioning.select(indices) if conditioning is not None else None
    t, memory = planner.start(rows, schedule, device)
    bad_t = torch.full_like(t, -1)  # t's dtype: int64, or float64 for a fractional list
    anchor: Point | None = None
    state = SolverState()
    log: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (rows, t, accepted) per evaluation
    # a static list without a monitor ends every row at its last entry, known here: no host sync per step
    fixed_length = len(planner.timesteps) if isinstance(planner, StaticPlan) and monitor is None else None
    if monitor is not None and hasattr(monitor, "reset"):
        monitor.reset()
    step = 0
    while len(active_host):
        pred = model(x, t, cond, capacity=rows)  # a bucket never outgrows the batch
        nfe[active] += 1
        evals[active] += pred.evals
        bad = pred.nonfinite_rows()
        new_bad = bad & (first_bad[active] < 0)
        first_bad[active] = torch.where(new_bad, step, first_bad[active])
        bad_t[active] = torch.where(new_bad, t.detach(), bad_t[active])
        observation = StepObservation(t, pred.x0, None if anchor is None else anchor.t,
                                      None if anchor is None else anchor.x0, memory)
        finishing = planner.finishing(memory) if isinstance(planner, FinishingPlan) else None
        decision = planner.decide(observation, schedule)
        # the first evaluation of a batch is always accepted: there is nothing to retry from
        decision = replace(decision, accept=decision.accept.to(device) | (anchor is None),
                           t_next=decision.t_next.to(device))
        if monitor is not None or trace is not None:
            info = StepInfo(step, t, decision.t_next, x, pred.x0, pred.eps, indices[active_host], finishing)
            if trace is not None:
                trace.append(StepInfo(step, t.cpu(), decision.t_next.cpu(), x.cpu(), pred.x0.cpu(), pred.eps.cpu(),
                                      info.sample_indices, None if finishing is None else finishing.cpu()))
            if monitor is not None:
                decision = _after_monitor(monitor(info), planner, observation, decision, schedule)
        accept, t_next = decision.accept, decision.t_next
        if fixed_length is None:
            # a row with a non-finite output ends now: a planner could otherwise retry it forever
            accept, t_next = accept | bad, torch.where(bad, -1, t_next)
        log.append((active, t, accept))
        rejected[active] += (~accept).long()
        alpha_bar = _per_row(schedule.alpha_bar(t).to(dtype), x.ndim)
        anchor = solver.accept(Point(t, x, pred.x0, pred.eps, alpha_bar), anchor, accept, state)
        noise = None
        if options.eta > 0:
            noise = draw_noise([generators[i] for i in active_host.tolist()], shape).to(device=device, dtype=dtype)
        x = solver.step(anchor, _per_row(schedule.alpha_bar(t_next).to(dtype), x.ndim), state, options.eta, noise)
        t, memory = t_next, decision.memory
        step += 1
        if fixed_length is not None:
            if step < fixed_length:
                continue
            finished_host = torch.ones(len(active_host), dtype=torch.bool)
        else:
            invalid = (t >= 0) & (t >= anchor.t)
            flags = torch.stack([t < 0, invalid]).cpu()  # the one host sync of a step whose rows may leave
            if bool(flags[1].any()):
                row = int(flags[1].nonzero()[0])
                raise FieldError("t_next", int(t[row]), f"was chosen by planner {planner.name!r} after accepted "
                                 f"timestep {int(anchor.t[row])}; it must lie in [-1, {int(anchor.t[row]) - 1}]")
            finished_host = flags[0]
        if not bool(finished_host.any()):
            continue
        finished = finished_host.to(device)
        out[active[finished]] = x[finished]
        going, going_host = ~finished, ~finished_host
        active, active_host = active[going], active_host[going_host]
        x, t, memory = x[going], t[going], memory[going]
        anchor = anchor.keep(going)
        state.keep(going)
        if cond is not None:
            cond = conditioning.select(indices[active_host])  # type: ignore[union-attr]
        if monitor is not None and hasattr(monitor, "keep"):
            monitor.keep(going)
    return _Batch(out, _accepted_timesteps(log, rows), nfe.cpu(), rejected.cpu(), evals.cpu(), first_bad.cpu(),
                  bad_t.cpu())


def _accepted_timesteps(log: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], rows: int) -> list[list[int]]:
    """Each row's accepted timesteps, in order, from the per-evaluation log (one transfer per batch)."""
    row_ids = torch.cat([entry[0] for entry in log]).cpu()
    ts = torch.cat([entry[1] for entry in log]).cpu()
    accepted = torch.cat([entry[2] for entry in log]).cpu()
    return [ts[(row_ids == r) & accepted].tolist() for r in range(rows)]


def sample(
    model: ModelAdapter,
    plan: Sequence[int] | torch.Tensor | Planner,
    shape: Sequence[int],
    n: int,
    *,
    batch_size: int = 64,
    seed: int = 0,
    eta: float = 0.0,
    solver: Solver | None = None,
    monitor: StepMonitor | None = None,
    conditioning: Conditioning | None = None,
    trace: bool = False,
    progress: bool = False,
    start: int = 0,
    finish: Finish | None = None,
    noise: torch.Tensor | None = None,
    grad: bool = False,
) -> SampleResult:
    """Draw n samples of `shape` with `solver`.

    Sample i draws its initial noise, then one η-noise per step, from its own generator seeded by (seed, i), so with
    the model's fixed `network_rows` it is bitwise identical on CPU whatever the batch size or composition. Raises
    NonFiniteOutputError (keeping the finished batches) if the model outputs NaN or Inf.

    Args:
        model: the network's adapter.
        plan: an explicit timestep list (each consecutive pair is one step, the last goes to t_prev = -1 and
            returns x̂0) or a `Planner` that picks each sample's steps while sampling (e.g. `StepSizeControl`).
        shape: (C, H, W) of one sample.
        seed: the run's seed (sample i's generator is seeded by (seed, i)).
        eta: DDIM's η (0: deterministic); needs a solver that supports it.
        solver: DDIM (the default, Song et al. 2021), DPM-Solver++(2M) or UniPC (`make_solver`).
        monitor: may end samples early (see `StepMonitor`) and steer their step size
            (`MonitorDecision.step_factor`, for planners with a step size: `StepSizeControl`, `SteeredPlan`).
        conditioning: the network's extra inputs per sample, and classifier-free guidance, optionally only in a
            `guidance_interval` of t (a loaded model's `conditioning` after `with_conditions`); FieldError if it
            lacks one the network needs, or has an interval without guidance or outside the model's timesteps.
        trace: keep every step's `StepInfo` in the result.
        start: the run draws samples start … start + n - 1 of a larger one (a shard, see
            `adaptive_sampler.distributed`): their seeds, `conditioning` rows and monitor indices are the global ones.
        finish: how an ended sample finishes: `Finish(mode="x0")` returns x̂0 of that evaluation, `Finish(steps=K,
            spacing=...)` takes K more steps to t = 0 with the run's solver, counted in NFE; None: `DEFAULT_FINISH`.
            Anything else (a string: `finish.parse_finish` reads one) is a FieldError.
        noise: [n, *shape], replaces the initial draws (e.g. a pipeline's `latents`); η-noise still comes from
            (seed, i).
        grad: keep the autograd graph instead of running in inference mode, so that a loss on the samples reaches
            a plan tensor that requires grad (fractional timesteps, see `tuning.ld3`) and `noise`.
    """
    options = SamplingOptions(n=n, batch_size=batch_size, seed=seed, start=start, eta=eta, trace=trace)
    if noise is not None and tuple(noise.shape) != (n, *shape):
        raise FieldError("noise", tuple(noise.shape), f"is not the shape of {n} samples of {tuple(shape)}")
    model.check_conditioning(conditioning)
    planner = plan if isinstance(plan, Planner) else StaticPlan(plan, model.schedule.num_train_timesteps)
    if finish is not None and not isinstance(finish, Finish):
        raise FieldError("finish", finish, "is not a Finish; pass Finish(mode=\"x0\"), Finish(steps=K, spacing=\"t\") "
                         f"or None ({DEFAULT_FINISH.spec()}); finish.parse_finish turns a string such as 'x0' into one")
    finish_mode = finish if finish is not None else DEFAULT_FINISH
    if monitor is not None and finish_mode.mode == "tail":
        planner = FinishingPlan(planner, finish_mode)
    solver = solver or DDIM()
    if options.eta > 0 and not solver.supports_eta:
        raise FieldError("eta", options.eta, f"needs a stochastic solver; {solver.name!r} is deterministic (eta=0)")
    with torch.inference_mode(not grad):  # grad: the graph reaches the plan and `noise`
        steps_trace: list[StepInfo] | None = [] if options.trace else None
        batches: list[_Batch] = []
        start_time = time.perf_counter()
        stop = options.start + options.n
        for first in tqdm(range(options.start, stop, options.batch_size), desc="sampling", unit="batch",
                          disable=not progress):
            indices = torch.arange(first, min(first + options.batch_size, stop))
            rows = None if noise is None else noise[first - options.start:first - options.start + len(indices)]
            batch = _run_batch(model, planner, solver, indices, shape, options, conditioning, monitor, steps_trace,
                               rows)
            bad_rows = (batch.first_bad >= 0).nonzero().flatten()
            if len(bad_rows):
                first = bad_rows[batch.first_bad[bad_rows].argmin()]
                partial = SampleResult.join(batches, shape, time.perf_counter() - start_time, steps_trace)
                raise NonFiniteOutputError(int(batch.first_bad[first]), batch.bad_t[first].item(),
                                           [int(indices[i]) for i in bad_rows], partial)
            batches.append(batch)
        return SampleResult.join(batches, shape, time.perf_counter() - start_time, steps_trace)
