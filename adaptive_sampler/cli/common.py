"""What the commands share: the one-line `CliError`, the options of the commands that draw samples (`sample`,
`eval`), `draw` (load, plan, sample) and its report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from adaptive_sampler.errors import FieldError
from adaptive_sampler.models import LoadedModel, load_model
from adaptive_sampler.monitors import AnyOf, LPIPSWeightsMissingError, monitor_from_spec
from adaptive_sampler.policies import POLICY_NAMES, make_policy
from adaptive_sampler.policies.step_size_control import StepSizeControl, parse_dynamic_policy
from adaptive_sampler.sampler import NonFiniteOutputError, SampleResult, sample
from adaptive_sampler.solvers import SOLVERS, make_solver


class CliError(Exception):
    """An error already phrased for the user, flag included where it has one; `main()` prints it as one line.

    Bad input that has a field raises `FieldError` instead: the CLI maps its field to the flag (see `__init__.py`).
    """


ModelOpt = Annotated[str, typer.Option(help="'embedded' or a diffusers model folder")]
PolicyOpt = Annotated[str, typer.Option(
    help=f"one of: {', '.join(POLICY_NAMES)}, or adaptive:TOLERANCE (per-sample step-size control)")]
StepsOpt = Annotated[int | None, typer.Option(help="number of steps (NFE); optional with --timesteps")]
TimestepsOpt = Annotated[str | None, typer.Option(help="explicit list, e.g. 999,950,900,800 (policy 'explicit')")]
EtaOpt = Annotated[float, typer.Option(help="DDIM η in [0, 1]; 0 is deterministic, 1 is DDPM-like")]
MonitorOpt = Annotated[list[str] | None, typer.Option(
    help="early-exit monitor NAME[:THRESHOLD] on x̂0, repeatable (any fires); no threshold = calibrated default")]
SolverOpt = Annotated[str, typer.Option(help=f"update rule, one of: {', '.join(SOLVERS)} (only ddim takes η > 0)")]
BatchOpt = Annotated[int, typer.Option(help="samples per batch")]
SeedOpt = Annotated[int, typer.Option(help="sample i uses the random stream (seed, i)")]
RowsOpt = Annotated[int, typer.Option(help="rows per network call, fixed for batch-size invariance; 0 = unbucketed")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, …")]
PickleOpt = Annotated[bool, typer.Option(help="allow pickled .bin/.pt weights (they can run code)")]
SaveOpt = Annotated[Path | None, typer.Option(help=".npy float32 array (n, C, H, W) in the model's range")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="write the run's report as JSON")]


@dataclass
class Drawn:
    """What `draw` produced: the model, the policy's name, the samples and which monitor stopped each one."""

    loaded: LoadedModel
    policy: str
    result: SampleResult
    planned: list[int] | None  # the policy's list; None when every sample chose its own timesteps
    stopped_by: list[str | None]  # per sample: the monitor that stopped it early, None if it ran to the end

    @property
    def steps(self) -> int | None:
        return len(self.planned) if self.planned is not None else None

    @property
    def steps_text(self) -> str:
        return f"{self.steps} steps" if self.steps is not None else "per-sample steps"

    def report(self, **extra: Any) -> dict[str, Any]:
        """The run's JSON report (`--json`): timesteps, NFE, stopping monitors, wall time, model, policy, `extra`."""
        result = self.result
        if self.planned is None:
            timesteps = {"timesteps_per_sample": result.timesteps, "rejected_per_sample": result.rejected.tolist()}
        else:
            timesteps = {"timesteps": self.planned}
        return {**timesteps, "nfe_per_sample": result.nfe.tolist(), "nfe_mean": result.nfe_mean,
                "stopped_by": self.stopped_by, "wall_s": result.wall_s,
                "model": {"name": self.loaded.name, "weights_sha256": self.loaded.weights_sha256},
                "policy": self.policy, "steps": self.steps, **extra}


def _parse_timesteps(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FieldError("timesteps", text, "is not a comma-separated list of integers") from None


def draw(model: str, policy: str, steps: int | None, timesteps: str | None, eta: float, solver: str,
         monitor: list[str] | None, n: int, batch_size: int, seed: int, network_rows: int, device: str,
         allow_pickle: bool, save: Path | None, check: Callable[[LoadedModel], None] | None = None) -> Drawn:
    """Load, plan and sample. Bad input raises the library's `FieldError` (the CLI names the flag); if the model
    produces NaN or Inf, the batches finished before it are saved next to --save."""
    if timesteps is not None and policy not in ("uniform", "explicit"):
        raise FieldError("timesteps", timesteps,
                         f"is given together with --policy {policy!r}; an explicit list is its own policy")
    if policy.startswith("adaptive") and steps is not None:
        raise FieldError("steps", steps, f"is not allowed with --policy {policy}; the controller picks each sample's "
                                         "steps")
    policy_name = "explicit" if timesteps is not None else policy
    try:
        update_rule = make_solver(solver)
        controller = parse_dynamic_policy(policy) if policy.startswith("adaptive") else None
        loaded = load_model(model, allow_pickle=allow_pickle, device=device)
        if check is not None:
            check(loaded)
        adapter = loaded.adapter(network_rows=network_rows or None)
        planned: list[int] | None = None
        plan: StepSizeControl | list[int]
        if controller is None:
            planned = make_policy(policy_name, _parse_timesteps(timesteps)).timesteps(steps, adapter.schedule).tolist()
            plan = planned
        else:
            plan = controller
        # one AnyOf over every --monitor, so it can say which of them stopped each sample
        watch = AnyOf(*(monitor_from_spec(spec, model=loaded.name, num_steps=len(planned) if planned else None)
                        for spec in monitor)) if monitor else None
        result = sample(adapter, plan, loaded.sample_shape, n, batch_size=batch_size, seed=seed,
                        eta=eta, progress=True, solver=update_rule, monitor=watch)
    except LPIPSWeightsMissingError as exc:
        raise CliError(f"--monitor: {exc}") from None
    except NonFiniteOutputError as exc:  # the finished batches are kept in .partial
        if save is not None and len(exc.partial.samples):
            partial = save.with_suffix(".partial.npy")
            np.save(partial, exc.partial.samples.numpy())
            raise CliError(f"{exc}; saved them to {partial}") from None
        raise CliError(str(exc)) from None
    if save is not None:
        np.save(save, result.samples.numpy().astype(np.float32))
    stopped_by: list[str | None] = [None] * n
    if watch is not None:
        stopped_by = [watch.stopped_by.get(i) for i in range(n)]
    return Drawn(loaded, controller.name if controller else policy_name, result, planned, stopped_by)
