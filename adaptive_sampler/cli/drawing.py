"""`draw`: what `sample` and `eval` do before they write or score: turn the options' spec strings into the library's
objects, load, condition, plan, sample and decode; and `Drawn`, its result and JSON report."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import typer

from adaptive_sampler.cli.common import CliError, decode_rows, row_policy
from adaptive_sampler.errors import FieldError

if TYPE_CHECKING:
    import torch

    from adaptive_sampler.finish import Finish
    from adaptive_sampler.model_adapter import RowPolicy
    from adaptive_sampler.monitors import Monitor
    from adaptive_sampler.options import DrawOptions
    from adaptive_sampler.pipeline import LoadedModel
    from adaptive_sampler.policies.step_size_control import SteeredPlan, StepSizeControl
    from adaptive_sampler.sampler import SampleResult

# the policies whose samples pick their own steps while sampling: adaptive:TOLERANCE and steered:N
DYNAMIC_POLICIES = ("adaptive", "steered")


@dataclass
class Drawn:
    """What `draw` produced: the model, the policy's name, the samples (a latent model's latents) and their
    `images` (decoded; the samples themselves for a pixel model), which monitor stopped each one, and per sample
    its prompt and class label (None for a model without them)."""

    loaded: LoadedModel
    policy: str
    result: SampleResult
    planned: list[int] | None  # the policy's list; None when every sample chose its own timesteps
    stopped_by: list[str | None]  # per sample: the monitor that stopped it early, None if it ran to the end
    rows: RowPolicy  # of the network calls
    images: torch.Tensor  # [n, C, H, W] in [-1, 1]
    prompts: list[str] | None = None
    labels: list[int] | None = None
    decode_s: float = 0.0  # the VAE decode of the final latents (not in result.wall_s)
    finish: str | None = None  # the finish spec of the samples a monitor ends; None without a monitor
    monitor_decode: tuple[int, float] = field(default=(0, 0.0))  # space=image monitors: rows decoded, seconds
    interpolated_from: int | None = None  # the length of the schedule file or catalogue list interpolated to `steps`

    @property
    def steps(self) -> int | None:
        return len(self.planned) if self.planned is not None else None

    @property
    def steps_text(self) -> str:
        return f"{self.steps} steps" if self.steps is not None else "per-sample steps"

    @property
    def guided(self) -> bool:
        """Whether the run used classifier-free guidance (then evals, not NFE, is its cost)."""
        conditioning = self.loaded.conditioning
        return conditioning is not None and conditioning.guided

    def cost_text(self) -> str:
        """"NFE mean 20.0", with ", evals mean 30.0" (rows through the network) under guidance."""
        text = f"NFE mean {self.result.nfe_mean:.1f}"
        return f"{text}, evals mean {self.result.evals_mean:.1f}" if self.guided else text

    def report(self, **extra: Any) -> dict[str, Any]:
        """The run's JSON report (`--json`): timesteps, NFE and network evaluations (2 per guided step), stopping
        monitors, wall time, model, policy, `extra`."""
        result = self.result
        if self.planned is None:
            timesteps = {"timesteps_per_sample": result.timesteps, "rejected_per_sample": result.rejected.tolist()}
        else:
            timesteps = {"timesteps": self.planned}
        conditions = self.loaded.conditions
        conditioned: dict[str, Any] = {}
        if self.prompts is not None and conditions is not None:
            conditioned = {"prompts": self.prompts, "negative_prompt": conditions.negative_prompt,
                           "guidance_scale": conditions.guidance_scale,
                           "guidance_interval": None if conditions.guidance_interval is None
                           else str(conditions.guidance_interval)}
        elif self.labels is not None:
            conditioned = {"labels": self.labels}
        if self.loaded.decoder is not None:
            # the wall time includes the monitors' decodes (space=image) but not the final decode
            conditioned.update(latent_shape=list(self.loaded.sample_shape), image_shape=list(self.loaded.image_shape),
                               decode_s=self.decode_s, monitor_decoded_rows=self.monitor_decode[0],
                               monitor_decode_s=self.monitor_decode[1])
        return {**timesteps, "nfe_per_sample": result.nfe.tolist(), "nfe_mean": result.nfe_mean,
                "evals_per_sample": result.evals_per_sample.tolist(), "evals_mean": result.evals_mean,
                "stopped_by": self.stopped_by, "finish": self.finish, "wall_s": result.wall_s,
                "model": {"name": self.loaded.name, "weights_sha256": self.loaded.weights_sha256},
                "policy": self.policy, "steps": self.steps, "interpolated_from": self.interpolated_from,
                **conditioned, **extra}


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


def _finish(finish: str | None, monitor: list[str] | None) -> Finish:
    """`--finish` as the library's Finish (not given: `finish.DEFAULT_FINISH`); FieldError("finish") for a value
    `finish.parse_finish` refuses, or for any `--finish` without a `--monitor` (no sample would end early)."""
    from adaptive_sampler.finish import parse_finish

    chosen = parse_finish(finish)
    if finish is not None and not monitor:
        raise FieldError("finish", finish, "is given without --monitor; it says how a sample a monitor ends early "
                                           "finishes, so add a --monitor or drop --finish")
    return chosen


def _steering_terms(monitor: Monitor) -> list[str]:
    """The specs of the steering monitors (`Monitor.steers`) in `monitor`, composites searched."""
    from adaptive_sampler.monitors import AllOf, AnyOf

    if monitor.steers:
        return [monitor.spec()]
    if isinstance(monitor, AnyOf | AllOf):
        return [spec for child in monitor.monitors for spec in _steering_terms(child)]
    return []


def no_exit_note(options: DrawOptions, planned: list[int] | None) -> str:
    """The line that says no sample exited early, with the `calibrate` command for this model and plan (a static
    plan and a calibratable monitor) that finds a threshold that fires."""
    steps = f"{len(planned)} steps" if planned is not None else "its steps"
    note = f"--monitor {' --monitor '.join(options.monitor or ())}: no sample exited early in {steps}"
    head, sep, keys = (options.monitor or [""])[0].replace("&", "|").split("|")[0].strip().partition(",")
    name = head.partition(":")[0].strip()  # the first term without its threshold, its guardrails and space kept
    if planned is None or options.timesteps is not None or name == "deadline":
        return note
    same = (("model", options.model, None), ("prompt", options.prompt, None), ("prompts", options.prompts, None),
            ("negative-prompt", options.negative_prompt, None), ("guidance-scale", options.guidance_scale, None),
            ("guidance-interval", options.guidance_interval, None),
            ("monitor", name + sep + keys, None), ("steps", len(planned), None), ("policy", options.policy, "uniform"),
            ("solver", options.solver, "ddim"))
    command = "".join(f" --{flag} {shlex.quote(str(value))}" for flag, value, default in same
                      if value is not None and value != default)
    return f"{note}; calibrate a threshold for this model: adaptive-sampler calibrate{command} --target-psnr 30"


def draw(options: DrawOptions, check: Callable[[LoadedModel], None] | None = None) -> Drawn:
    """Check, load, condition, plan, sample and decode what `options` ask for.

    Bad input raises the library's `FieldError` (the CLI names the flag), all of it before the first network call (a
    steering monitor with a static policy included); `check`, a last check of the loaded model (e.g. that a metric
    can score its images), runs after the plan and the monitors are built. The samples are returned, not written;
    if the model produces NaN or Inf, the batches finished before it are saved as <save>.partial.npy.
    """
    # the library, torch included, is imported only when a command runs (`--help` stays fast)
    from adaptive_sampler import distributed
    from adaptive_sampler.cli.outputs import npy_path
    from adaptive_sampler.models import load_model, resolve_device
    from adaptive_sampler.monitors import AnyOf, LPIPSWeightsMissingError, monitor_from_spec
    from adaptive_sampler.monitors.space import decode_cost
    from adaptive_sampler.policies import check_model, check_solver, interpolated_from, make_policy
    from adaptive_sampler.policies.step_size_control import SteeredPlan, check_steered, parse_dynamic_policy
    from adaptive_sampler.sampler import NonFiniteOutputError
    from adaptive_sampler.solvers import make_solver

    policy, steps, timesteps, monitor, n = options.policy, options.steps, options.timesteps, options.monitor, options.n
    finish_mode = _finish(options.finish, monitor)
    torch_device = resolve_device(options.device)
    if timesteps is not None and policy not in ("uniform", "explicit"):
        raise FieldError("timesteps", timesteps,
                         f"is given together with --policy {policy!r}; an explicit list is its own policy")
    dynamic = policy.startswith(DYNAMIC_POLICIES)
    if dynamic and steps is not None:
        raise FieldError("steps", steps, f"is not allowed with --policy {policy}; each sample picks its own steps "
                                         "(adaptive: the controller; steered:N: N to start with, then the monitor)")
    policy_name = "explicit" if timesteps is not None else policy
    wanted = options.conditions()  # a prompts file is read here
    rows = row_policy(options.network_rows, torch_device)
    chunk = decode_rows(rows)  # the VAE decodes in fixed chunks too
    try:
        update_rule = make_solver(options.solver)
        controller = parse_dynamic_policy(policy) if dynamic else None
        loaded = load_model(options.model, allow_pickle=options.allow_pickle, device=torch_device,
                            height=options.height, width=options.width, dtype=options.dtype)
        loaded = loaded.with_conditions(wanted)  # checked against the model; each distinct prompt encoded once
        adapter = loaded.adapter(network_rows=rows)
        if isinstance(controller, SteeredPlan):
            check_steered(controller, policy, adapter.schedule.num_train_timesteps)
        planned: list[int] | None = None
        stretched: int | None = None
        plan: StepSizeControl | SteeredPlan | list[int]
        if controller is None:
            chosen = make_policy(policy_name, _parse_timesteps(timesteps))
            check_solver(chosen, options.solver)  # a schedule file or catalogue entry made for another solver
            other_model = check_model(chosen, loaded, allow_other_model=options.allow_other_model)  # or model
            if other_model is not None and distributed.is_main():
                typer.echo(other_model, err=True)
            stretched = interpolated_from(chosen, steps)
            if stretched is not None and distributed.is_main():
                typer.echo(f"note: --policy {policy} holds {stretched} steps; it is interpolated (log-linear) to "
                           f"--steps {steps}", err=True)
            planned = chosen.timesteps(steps, adapter.schedule).tolist()
            plan = planned
        else:
            plan = controller
        # one AnyOf over every --monitor, so it can say which of them stopped each sample
        decode = (lambda x: loaded.decode(x, chunk)) if loaded.decoder is not None else None
        built = [monitor_from_spec(spec, model=loaded.name, num_steps=len(planned) if planned else None,
                                   decode=decode) for spec in monitor or ()]
        # a static list cannot be steered: the core would refuse it at the first step, this before any network call
        for spec, built_monitor in zip(monitor or (), built, strict=True):
            steering = _steering_terms(built_monitor) if planned is not None else []
            if steering:
                term = f" ({', '.join(steering)})" if steering != [built_monitor.spec()] else ""  # in a composite
                raise FieldError("monitor", spec, f"steers step sizes{term}, but policy {policy_name!r} is a static "
                                                  "list, which cannot change its steps; use --policy steered:N or "
                                                  "adaptive:TOLERANCE")
        watch = AnyOf(*built) if built else None
        if check is not None:
            check(loaded)
        result = distributed.sample(adapter, plan, loaded.sample_shape, n, batch_size=options.batch_size,
                                    seed=options.seed, eta=options.eta, progress=True, solver=update_rule,
                                    monitor=watch, conditioning=loaded.conditioning, finish=finish_mode)
    except LPIPSWeightsMissingError as exc:
        raise CliError(f"--monitor: {exc}") from None
    except NonFiniteOutputError as exc:  # the finished batches are kept in .partial
        if options.save is not None and len(exc.partial.samples) and distributed.is_main():
            partial = npy_path(options.save).with_suffix(".partial.npy")
            np.save(partial, exc.partial.samples.numpy())
            raise CliError(f"{exc}; saved them to {partial}") from None
        raise CliError(str(exc)) from None
    stopped_by: list[str | None] = [None] * n
    if watch is not None:
        stopped = distributed.gather_stopped_by(watch.stopped_by)  # under torchrun: every rank's samples
        stopped_by = [stopped.get(i) for i in range(n)]
        if not any(stopped_by) and not _steering_terms(watch) and distributed.is_main():
            typer.echo(no_exit_note(options, planned), err=True)
    start = time.perf_counter()
    images = loaded.decode(result.samples.to(torch_device), chunk).float().cpu()
    bound = loaded.conditions
    return Drawn(loaded, controller.name if controller else policy_name, result, planned, stopped_by, rows, images,
                 prompts=bound.prompts_for(range(n)) if bound is not None else None,
                 labels=bound.labels_for(range(n)) if bound is not None else None,
                 decode_s=time.perf_counter() - start if loaded.decoder is not None else 0.0,
                 finish=finish_mode.spec() if watch is not None else None, monitor_decode=decode_cost(watch),
                 interpolated_from=stretched)
