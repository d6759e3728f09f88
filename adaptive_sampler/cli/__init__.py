"""The `adaptive-sampler` command line."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from pydantic import ValidationError

from adaptive_sampler.models import LoadedModel, load_model
from adaptive_sampler.monitors import AnyOf, LPIPSWeightsMissingError, monitor_from_spec
from adaptive_sampler.policies import POLICY_NAMES, make_policy
from adaptive_sampler.policies.step_size_control import parse_dynamic_policy
from adaptive_sampler.sampler import NonFiniteOutputError, SampleResult, sample
from adaptive_sampler.schedules.catalogue import list_entries, load_entry
from adaptive_sampler.solvers import SOLVERS, make_solver
from adaptive_sampler.cli.tune import tune_command

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Fewer network passes per diffusion sample.")
policies_app = typer.Typer(no_args_is_help=True, help="The schedule catalogue.")
app.add_typer(policies_app, name="policies")

# Field names used in our errors -> the flag a user typed.
_FLAGS = {"model": "--model", "policy": "--policy", "num_steps": "--steps", "timesteps": "--timesteps",
          "n": "--n", "batch_size": "--batch-size", "seed": "--seed", "eta": "--eta",
          "network_rows": "--network-rows", "device": "--device", "format": "--format",
          "bootstrap": "--bootstrap", "solver": "--solver", "monitor": "--monitor"}


class CliError(Exception):
    """An error already phrased for the user; printed as one line."""


def _flag_error(exc: ValueError, flags: dict[str, str] = _FLAGS) -> CliError:
    """Rephrase a field-named error ("num_steps: 0 is …" or a pydantic error) with the flag's name."""
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        return CliError(f"{flags.get(field, field)}: {err.get('input')!r} — {err['msg']}")
    message = str(exc)
    field = message.split(":", 1)[0].split("[", 1)[0]
    if field in flags:
        return CliError(flags[field] + message[len(field):])
    return CliError(message)


def _parse_timesteps(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CliError(f"--timesteps: {text!r} is not a comma-separated list of integers") from None


def _save_grid(samples: torch.Tensor, path: Path) -> None:
    from torchvision.utils import save_image

    save_image(samples[:, :3] * 0.5 + 0.5, path, nrow=max(1, math.ceil(math.sqrt(len(samples)))))


# Options shared by the commands that draw samples.
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
class _Drawn:
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
        result = self.result
        if self.planned is None:
            timesteps = {"timesteps_per_sample": result.timesteps, "rejected_per_sample": result.rejected.tolist()}
        else:
            timesteps = {"timesteps": self.planned}
        return {**timesteps, "nfe_per_sample": result.nfe.tolist(), "nfe_mean": result.nfe_mean,
                "stopped_by": self.stopped_by, "wall_s": result.wall_s,
                "model": {"name": self.loaded.name, "weights_sha256": self.loaded.weights_sha256},
                "policy": self.policy, "steps": self.steps, **extra}


def _draw(model: str, policy: str, steps: int | None, timesteps: str | None, eta: float, solver: str,
          monitor: list[str] | None, n: int, batch_size: int, seed: int, network_rows: int, device: str,
          allow_pickle: bool, save: Path | None, check: Callable[[LoadedModel], None] | None = None) -> _Drawn:
    """Load, plan and sample, turning every input error into a one-line flag error. If the model produces NaN or
    Inf, the batches finished before it are saved next to --save."""
    if timesteps is not None and policy not in ("uniform", "explicit"):
        raise CliError(f"--timesteps: given together with --policy {policy!r}; an explicit list is its own policy")
    if policy.startswith("adaptive") and steps is not None:
        raise CliError(f"--steps: not allowed with --policy {policy}; the controller picks each sample's steps")
    policy_name = "explicit" if timesteps is not None else policy
    try:
        update_rule = make_solver(solver)
        controller = parse_dynamic_policy(policy) if policy.startswith("adaptive") else None
        loaded = load_model(model, allow_pickle=allow_pickle, device=device)
        if check is not None:
            check(loaded)
        adapter = loaded.adapter(network_rows=network_rows or None)
        planned = None
        if controller is None:
            planned = make_policy(policy_name, _parse_timesteps(timesteps)).timesteps(steps, adapter.schedule).tolist()
        # one AnyOf over every --monitor, so it can say which of them stopped each sample
        watch = AnyOf(*(monitor_from_spec(spec, model=loaded.name, num_steps=len(planned) if planned else None)
                        for spec in monitor)) if monitor else None
        result = sample(adapter, controller or planned, loaded.sample_shape, n, batch_size=batch_size, seed=seed,
                        eta=eta, progress=True, solver=update_rule, monitor=watch)
    except LPIPSWeightsMissingError as exc:
        raise CliError(f"--monitor: {exc}") from None
    except NonFiniteOutputError as exc:  # the finished batches are kept in .partial
        if save is not None and len(exc.partial.samples):
            partial = save.with_suffix(".partial.npy")
            np.save(partial, exc.partial.samples.numpy())
            raise CliError(f"{exc}; saved them to {partial}") from None
        raise CliError(str(exc)) from None
    except ValueError as exc:
        raise _flag_error(exc) from None
    if save is not None:
        np.save(save, result.samples.numpy().astype(np.float32))
    stopped_by: list[str | None] = [None] * n
    if watch is not None:
        stopped_by = [watch.stopped_by.get(i) for i in range(n)]
    return _Drawn(loaded, controller.name if controller else policy_name, result, planned, stopped_by)


@app.command("sample")
def sample_command(
    model: ModelOpt = "embedded", policy: PolicyOpt = "uniform", steps: StepsOpt = None,
    timesteps: TimestepsOpt = None, eta: EtaOpt = 0.0, solver: SolverOpt = "ddim", monitor: MonitorOpt = None,
    n: Annotated[int, typer.Option(help="number of samples")] = 16,
    batch_size: BatchOpt = 64, seed: SeedOpt = 0, network_rows: RowsOpt = 8, device: DeviceOpt = "auto",
    allow_pickle: PickleOpt = False,
    out: Annotated[Path | None, typer.Option(help="PNG grid of the samples")] = None,
    save: SaveOpt = None, json_path: JsonOpt = None,
) -> None:
    """Draw samples with a solver (DDIM by default) over a policy's timesteps."""
    drawn = _draw(model, policy, steps, timesteps, eta, solver, monitor, n, batch_size, seed, network_rows, device,
                  allow_pickle, save)
    result = drawn.result
    if out is not None:
        _save_grid(result.samples, out)
    samples_per_s = n / result.wall_s if result.wall_s > 0 else None
    report = drawn.report(n=n, seed=seed, eta=eta, solver=solver, batch_size=batch_size,
                          network_rows=network_rows or None, samples_per_s=samples_per_s)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    typer.echo(f"{n} samples, {drawn.steps_text} ({drawn.policy}, {solver}), "
               f"NFE mean {result.nfe_mean:.1f}, {result.wall_s:.1f} s ({samples_per_s:.1f} samples/s)")


@app.command("eval")
def eval_command(
    model: ModelOpt = "embedded", policy: PolicyOpt = "uniform", steps: StepsOpt = None,
    timesteps: TimestepsOpt = None, eta: EtaOpt = 0.0, solver: SolverOpt = "ddim", monitor: MonitorOpt = None,
    n: Annotated[int, typer.Option(help="number of samples; must exceed the feature dimension (128)")] = 2000,
    batch_size: BatchOpt = 64, seed: SeedOpt = 0, network_rows: RowsOpt = 8, device: DeviceOpt = "auto",
    allow_pickle: PickleOpt = False,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamplings for 95% intervals of FID and KID")] = 0,
    save: SaveOpt = None, json_path: JsonOpt = None,
) -> None:
    """Sample, then score FID/KID/precision/recall in the embedded Fashion-MNIST feature space."""
    from rich.console import Console
    from rich.table import Table

    from adaptive_sampler.metrics.evaluation import EvaluationReport, check_embedded_space, score_samples

    drawn = _draw(model, policy, steps, timesteps, eta, solver, monitor, n, batch_size, seed, network_rows, device,
                  allow_pickle, save, check=lambda m: check_embedded_space(m.sample_shape, n))
    loaded, policy_name, result = drawn.loaded, drawn.policy, drawn.result
    try:
        metrics = score_samples(result.samples, bootstrap=bootstrap, seed=seed)
    except ValueError as exc:
        raise _flag_error(exc) from None
    report = EvaluationReport(metrics, result.nfe_mean, n, seed, result.wall_s)
    table = Table(title=f"{loaded.name}: {solver}, {policy_name}, {drawn.steps_text}, η={eta}")
    for column in ("FID", "KID", "precision", "recall", "NFE", "n", "wall s"):
        table.add_column(column, justify="right")
    table.add_row(f"{metrics.fid:.3f}", f"{metrics.kid:.4f}", f"{metrics.precision:.3f}", f"{metrics.recall:.3f}",
                  f"{result.nfe_mean:.1f}", str(n), f"{result.wall_s:.1f}")
    Console().print(table)
    if json_path is not None:
        payload = {**drawn.report(solver=solver, eta=eta), **report.to_json()}
        json_path.write_text(json.dumps(payload, indent=2, default=vars) + "\n")


app.command("tune")(tune_command)


@policies_app.command("list")
def policies_list() -> None:
    """List the catalogue's schedules."""
    for name in list_entries():
        artifact = load_entry(name)
        typer.echo(f"{name:28s} {len(artifact.timesteps):3d} steps  {artifact.solver:9s} {artifact.model.name}")


@policies_app.command("show")
def policies_show(
    name: Annotated[str, typer.Argument(help="catalogue entry, e.g. sd15/ays-10")],
    steps: Annotated[int | None, typer.Option(help="another step count (log-linear interpolation)")] = None,
    format: Annotated[str, typer.Option(help="json, diffusers, sigmas or comfyui")] = "json",
) -> None:
    """Print a catalogue schedule, as its JSON or as an export."""
    if format not in ("json", "diffusers", "sigmas", "comfyui"):
        raise CliError(f"--format: {format!r} is not one of json, diffusers, sigmas, comfyui")
    try:
        artifact = load_entry(name, steps)
        text = {
            "json": lambda: artifact.model_dump_json(indent=2),
            "diffusers": lambda: json.dumps(artifact.to_diffusers_timesteps()),
            "sigmas": lambda: json.dumps(artifact.to_sigmas()),
            "comfyui": artifact.to_comfyui_sigmas,
        }[format]()
    except ValueError as exc:
        raise _flag_error(exc, {**_FLAGS, "policy": "NAME"}) from None
    typer.echo(text)


def main() -> None:
    """Entry point: one-line errors naming the flag, no tracebacks, non-zero exit."""
    try:
        app(standalone_mode=False)
    except CliError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.TyperException as exc:  # typer's parse errors (its vendored click), made one line
        message = exc.format_message()
        if message:  # empty when a bare group printed its help (no_args_is_help)
            typer.echo(f"error: {message}", err=True)
        sys.exit(exc.exit_code)
