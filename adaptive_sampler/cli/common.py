"""What the commands share: the one-line `CliError`, the options of the commands that draw samples (`sample`,
`eval`), `draw` (load, plan, sample) and its report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from adaptive_sampler.errors import FieldError

if TYPE_CHECKING:
    from adaptive_sampler.models import LoadedModel
    from adaptive_sampler.policies.step_size_control import StepSizeControl
    from adaptive_sampler.sampler import SampleResult

# The names the options' help lists. They are spelled out so that `--help` imports no torch; a test checks them
# against the registries (adaptive_sampler.policies.POLICY_NAMES, adaptive_sampler.solvers.SOLVERS).
POLICY_NAMES = ("uniform", "leading", "trailing", "quadratic", "karras", "logsnr", "front-loaded", "explicit",
                "learned:<model>/<family>-<N>", "file:<path>")
SOLVER_NAMES = ("ddim", "dpmpp-2m", "unipc")


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
SolverOpt = Annotated[str, typer.Option(help=f"update rule, one of: {', '.join(SOLVER_NAMES)} (only ddim takes "
                                             "η > 0)")]
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


# Upper bounds of the numbers `sample` and `eval` take: far above any real run, low enough that nothing overflows or
# tries to allocate terabytes before it starts.
MAX_N = 10**7
MAX_BATCH_SIZE = 10**5
MAX_NETWORK_ROWS = 4096
SEED_LIMIT = 2**63  # seeds are 0 ... 2**63 - 1
MAX_BOOTSTRAP = 10**5


def _check_int(field: str, value: int, low: int, high: int, what: str) -> None:
    if not low <= value <= high:
        raise FieldError(field, value, f"is outside [{low}, {high}] ({what})")


def check_numbers(n: int, batch_size: int, seed: int, network_rows: int, eta: float) -> None:
    """The numeric options of `sample`/`eval`, checked before anything is loaded: FieldError naming the first bad
    one (`n`, `batch_size`, `seed`, `network_rows`, `eta`)."""
    _check_int("n", n, 1, MAX_N, "the number of samples; split larger runs")
    _check_int("batch_size", batch_size, 1, MAX_BATCH_SIZE, "samples per batch")
    _check_int("seed", seed, 0, SEED_LIMIT - 1, "a seed is a non-negative 63-bit integer")
    _check_int("network_rows", network_rows, 0, MAX_NETWORK_ROWS, "rows per network call; 0 = unbucketed")
    if not 0.0 <= eta <= 1.0:  # NaN included
        raise FieldError("eta", eta, "is not a number in [0, 1]; 0 is deterministic, 1 is DDPM-like")
    from adaptive_sampler.sampler import SamplingOptions

    SamplingOptions(n=n, batch_size=batch_size, seed=seed, eta=eta)  # the library's own rules, up front


def _parse_timesteps(text: str | None) -> list[int | float] | None:
    if text is None:
        return None
    items = [v.strip() for v in text.split(",")]
    try:
        if not all(items):
            raise ValueError
        return [int(v) if v.lstrip("+-").isdigit() else float(v) for v in items]
    except ValueError:
        raise FieldError("timesteps", text, "is not a comma-separated list of numbers, e.g. 999,600,300,0 (fractional "
                         "timesteps such as 450.5 are allowed)") from None


def draw(model: str, policy: str, steps: int | None, timesteps: str | None, eta: float, solver: str,
         monitor: list[str] | None, n: int, batch_size: int, seed: int, network_rows: int, device: str,
         allow_pickle: bool, save: Path | None, check: Callable[[LoadedModel], None] | None = None) -> Drawn:
    """Check, load, plan and sample. Bad input raises the library's `FieldError` (the CLI names the flag), all of it
    before the first network call; `check` runs on the loaded model after the plan and the monitors are built. The
    samples are returned, not written (the command writes its outputs, see `outputs.py`); if the model produces NaN
    or Inf, the batches finished before it are saved next to `save`, as <save>.partial.npy."""
    # the library, torch included, is imported only when a command runs (`--help` stays fast)
    from adaptive_sampler import distributed
    from adaptive_sampler.models import load_model, resolve_device
    from adaptive_sampler.monitors import AnyOf, LPIPSWeightsMissingError, monitor_from_spec
    from adaptive_sampler.policies import make_policy
    from adaptive_sampler.policies.learned import check_solver
    from adaptive_sampler.policies.step_size_control import parse_dynamic_policy
    from adaptive_sampler.sampler import NonFiniteOutputError
    from adaptive_sampler.solvers import make_solver

    check_numbers(n, batch_size, seed, network_rows, eta)
    torch_device = resolve_device(device)
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
        loaded = load_model(model, allow_pickle=allow_pickle, device=torch_device)
        adapter = loaded.adapter(network_rows=network_rows or None)
        planned: list[int] | None = None
        plan: StepSizeControl | list[int]
        if controller is None:
            chosen = make_policy(policy_name, _parse_timesteps(timesteps))
            check_solver(chosen, solver)  # a schedule file or catalogue entry made for another solver is refused
            planned = chosen.timesteps(steps, adapter.schedule).tolist()
            plan = planned
        else:
            plan = controller
        # one AnyOf over every --monitor, so it can say which of them stopped each sample
        watch = AnyOf(*(monitor_from_spec(spec, model=loaded.name, num_steps=len(planned) if planned else None)
                        for spec in monitor)) if monitor else None
        if check is not None:
            check(loaded)
        result = distributed.sample(adapter, plan, loaded.sample_shape, n, batch_size=batch_size, seed=seed,
                        eta=eta, progress=True, solver=update_rule, monitor=watch)
    except LPIPSWeightsMissingError as exc:
        raise CliError(f"--monitor: {exc}") from None
    except NonFiniteOutputError as exc:  # the finished batches are kept in .partial
        if save is not None and len(exc.partial.samples) and distributed.is_main():
            partial = save.with_suffix(".partial.npy")
            np.save(partial, exc.partial.samples.numpy())
            raise CliError(f"{exc}; saved them to {partial}") from None
        raise CliError(str(exc)) from None
    stopped_by: list[str | None] = [None] * n
    if watch is not None:
        stopped = distributed.gather_stopped_by(watch.stopped_by)  # under torchrun: every rank's samples
        stopped_by = [stopped.get(i) for i in range(n)]
    return Drawn(loaded, controller.name if controller else policy_name, result, planned, stopped_by)
