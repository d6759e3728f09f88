"""What the commands share: the one-line `CliError`, the options of the commands that draw samples (`sample`,
`eval`), `draw` (load, plan, sample) and its report."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from adaptive_sampler.errors import FieldError

if TYPE_CHECKING:
    import torch

    from adaptive_sampler.finish import Finish
    from adaptive_sampler.models import LoadedModel
    from adaptive_sampler.monitors import Monitor
    from adaptive_sampler.policies.step_size_control import SteeredPlan, StepSizeControl
    from adaptive_sampler.sampler import SampleResult

# The names the options' help lists. They are spelled out so that `--help` imports no torch; a test checks them
# against the registries (adaptive_sampler.policies.POLICY_NAMES, adaptive_sampler.solvers.SOLVERS).
POLICY_NAMES = ("uniform", "leading", "trailing", "quadratic", "karras", "logsnr", "front-loaded", "explicit",
                "learned:<model>/<family>-<N>", "file:<path>")
SOLVER_NAMES = ("ddim", "dpmpp-2m", "unipc")
# `--finish` when not given: the spec of adaptive_sampler.finish.DEFAULT_FINISH (spelled out for the same reason; the
# same test checks it)
DEFAULT_FINISH_SPEC = "tail:3:t"
# the policies whose samples pick their own steps while sampling: adaptive:TOLERANCE and steered:N
DYNAMIC_POLICIES = ("adaptive", "steered")


class CliError(Exception):
    """An error already phrased for the user, flag included where it has one; `main()` prints it as one line.

    Bad input that has a field raises `FieldError` instead: the CLI maps its field to the flag (see `__init__.py`).
    """


ModelOpt = Annotated[str, typer.Option(help=(
    "'embedded', 'embedded-t2i', or a diffusers folder: a UNet folder or DDPM pipeline folder (unconditional or "
    "class-conditional UNet2DModel), or a Stable Diffusion 1.x/2.x folder (unet/, vae/, text_encoder/, tokenizer/, "
    "scheduler/)"))]
PolicyOpt = Annotated[str, typer.Option(
    help=f"one of: {', '.join(POLICY_NAMES)}, or adaptive:TOLERANCE (per-sample step-size control), or steered:N "
         "(N steps uniform in log-SNR that a steering --monitor steer-NAME:LOW:HIGH doubles or halves per sample)")]
StepsOpt = Annotated[int | None, typer.Option(help="number of steps (NFE); optional with --timesteps")]
TimestepsOpt = Annotated[str | None, typer.Option(help="explicit list, e.g. 999,950,900,800 (policy 'explicit')")]
EtaOpt = Annotated[float, typer.Option(help="DDIM η in [0, 1]; 0 is deterministic, 1 is DDPM-like")]
MonitorOpt = Annotated[list[str] | None, typer.Option(
    help="early-exit monitor NAME[:THRESHOLD] on x̂0, repeatable (any fires); no threshold = calibrated default")]
FinishOpt = Annotated[str | None, typer.Option(help=(
    "how a sample a --monitor ends finishes: x0 (return x̂0 at once) or tail[:K[:t|logsnr]] (K more solver steps to "
    f"t = 0, counted in NFE; tail = tail:3:t); default {DEFAULT_FINISH_SPEC}; needs --monitor"))]
SolverOpt = Annotated[str, typer.Option(help=f"update rule, one of: {', '.join(SOLVER_NAMES)} (only ddim takes "
                                             "η > 0)")]
BatchOpt = Annotated[int, typer.Option(help="samples per batch")]
SeedOpt = Annotated[int, typer.Option(help="sample i uses the random stream (seed, i)")]
RowsOpt = Annotated[str, typer.Option(help=(
    "row policy of the network calls: auto (fixed:8 on CPU, buckets on CUDA), N or fixed:N (chunks of N rows: "
    "bitwise batch-size invariant), buckets[:MIN] (padded to a power of two), all or 0 (no padding)"))]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, …")]
# spelled out so that `--help` imports no torch; a test checks them against model_adapter.NETWORK_DTYPES
DTYPE_NAMES = ("float32", "float16", "bfloat16")
DtypeOpt = Annotated[str, typer.Option(help=f"the network's weights: {', '.join(DTYPE_NAMES)} (the sampler's state "
                                            "stays float32)")]
PickleOpt = Annotated[bool, typer.Option(help="allow pickled .bin/.pt weights (they can run code)")]
SaveOpt = Annotated[Path | None, typer.Option(help=(
    ".npy float32 array (n, C, H, W) of the images in [-1, 1] (a latent model's decoded by its VAE)"))]
SaveLatentsOpt = Annotated[Path | None, typer.Option(help=(
    ".npy float32 array (n, c, h, w) of a latent model's latents"))]
PromptOpt = Annotated[str | None, typer.Option(help="the prompt of every sample (text-to-image models)")]
PromptsOpt = Annotated[Path | None, typer.Option(help=(
    "a text file of prompts, one per line (blank lines skipped); sample i takes prompt i mod P"))]
NegativePromptOpt = Annotated[str | None, typer.Option(help=(
    "the prompt of guidance's unconditional branch (default: the empty prompt)"))]
GuidanceOpt = Annotated[float | None, typer.Option(help=(
    "classifier-free guidance scale >= 1; default 7.5 for text-to-image models, 1 (no guidance) otherwise"))]
ClassLabelsOpt = Annotated[str | None, typer.Option(help=(
    "class labels of a class-conditional model, e.g. 0,3,7; sample i takes label i mod L"))]
ClassesOpt = Annotated[str | None, typer.Option(help=(
    "'all': sample i takes class i mod the class count (the default of a class-conditional model)"))]
HeightOpt = Annotated[int | None, typer.Option(help="image height in pixels (default: from the UNet and VAE configs)")]
WidthOpt = Annotated[int | None, typer.Option(help="image width in pixels (default: from the UNet and VAE configs)")]


@dataclass(frozen=True)
class ConditionFlags:
    """The conditioning flags of a command as typed (checked by `pipeline.Conditions.from_flags`)."""

    prompt: str | None = None
    prompts: Path | None = None
    negative_prompt: str | None = None
    guidance_scale: float | None = None
    class_labels: str | None = None
    classes: str | None = None
JsonOpt = Annotated[Path | None, typer.Option("--json", help="write the run's report as JSON")]


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
    images: torch.Tensor | None = None  # [n, C, H, W] in [-1, 1]; None only when built without `draw`
    prompts: list[str] | None = None
    labels: list[int] | None = None
    decode_s: float = 0.0  # the VAE decode of the final latents (not in result.wall_s)
    finish: str | None = None  # the finish spec of the samples a monitor ends; None without a monitor
    monitor_decode: tuple[int, float] = field(default=(0, 0.0))  # space=image monitors: rows decoded, seconds

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
        conditions = self.loaded.conditions
        conditioned: dict[str, Any] = {}
        if self.prompts is not None and conditions is not None:
            conditioned = {"prompts": self.prompts, "negative_prompt": conditions.negative_prompt,
                           "guidance_scale": conditions.guidance_scale}
        elif self.labels is not None:
            conditioned = {"labels": self.labels}
        if self.loaded.decoder is not None:
            # the wall time includes the monitors' decodes (space=image) but not the final decode
            conditioned.update(latent_shape=list(self.loaded.sample_shape), image_shape=list(self.loaded.image_shape),
                               decode_s=self.decode_s, monitor_decoded_rows=self.monitor_decode[0],
                               monitor_decode_s=self.monitor_decode[1])
        return {**timesteps, "nfe_per_sample": result.nfe.tolist(), "nfe_mean": result.nfe_mean,
                "stopped_by": self.stopped_by, "finish": self.finish, "wall_s": result.wall_s,
                "model": {"name": self.loaded.name, "weights_sha256": self.loaded.weights_sha256},
                "policy": self.policy, "steps": self.steps, **conditioned, **extra}


# Upper bounds of the numbers `sample` and `eval` take: far above any real run, low enough that nothing overflows or
# tries to allocate terabytes before it starts.
MAX_N = 10**7
MAX_BATCH_SIZE = 10**5
SEED_LIMIT = 2**63  # seeds are 0 ... 2**63 - 1
MAX_BOOTSTRAP = 10**5


def _check_int(field: str, value: int, low: int, high: int, what: str) -> None:
    if not low <= value <= high:
        raise FieldError(field, value, f"is outside [{low}, {high}] ({what})")


def row_spec(network_rows: str | int) -> str | int | None:
    """`--network-rows` as the adapter's row policy (see `model_adapter.row_spec_from_text`)."""
    from adaptive_sampler.model_adapter import row_spec_from_text

    return row_spec_from_text(network_rows)


def decode_rows(network_rows: str | int) -> int:
    """The fixed chunk the VAE decodes in: the fixed row count if one is given, else 8 (a sample's image then does
    not depend on its batch either)."""
    import torch

    from adaptive_sampler.model_adapter import RowPolicy

    policy = RowPolicy.parse(row_spec(network_rows), torch.device("cpu"))
    return policy.size if policy.kind == "fixed" else 8


def check_numbers(n: int, batch_size: int, seed: int, network_rows: str | int, eta: float) -> None:
    """The numeric options of `sample`/`eval`, checked before anything is loaded: FieldError naming the first bad
    one (`n`, `batch_size`, `seed`, `network_rows`, `eta`)."""
    _check_int("n", n, 1, MAX_N, "the number of samples; split larger runs")
    _check_int("batch_size", batch_size, 1, MAX_BATCH_SIZE, "samples per batch")
    _check_int("seed", seed, 0, SEED_LIMIT - 1, "a seed is a non-negative 63-bit integer")
    row_spec(network_rows)
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


def check_finish(finish: str | None, monitor: list[str] | None) -> Finish:
    """`--finish` as the library's Finish (not given: `finish.DEFAULT_FINISH`); FieldError("finish") for a value
    `finish.parse_finish` refuses, or for any `--finish` without a `--monitor` (no sample would end early)."""
    from adaptive_sampler.finish import parse_finish

    chosen = parse_finish(finish)
    if finish is not None and not monitor:
        raise FieldError("finish", finish, "is given without --monitor; it says how a sample a monitor ends early "
                                           "finishes, so add a --monitor or drop --finish")
    return chosen


def steering_terms(monitor: Monitor) -> list[str]:
    """The specs of the steering monitors (`Monitor.steers`) in `monitor`, composites searched."""
    from adaptive_sampler.monitors import AllOf, AnyOf

    if monitor.steers:
        return [monitor.spec()]
    if isinstance(monitor, AnyOf | AllOf):
        return [spec for child in monitor.monitors for spec in steering_terms(child)]
    return []


def draw(model: str, policy: str, steps: int | None, timesteps: str | None, eta: float, solver: str,
         monitor: list[str] | None, n: int, batch_size: int, seed: int, network_rows: str | int, device: str,
         allow_pickle: bool, save: Path | None, check: Callable[[LoadedModel], None] | None = None, *,
         conditions: ConditionFlags | None = None, height: int | None = None, width: int | None = None,
         dtype: str = "float32", finish: str | None = None) -> Drawn:
    """Check, load, condition, plan, sample and decode. Bad input raises the library's `FieldError` (the CLI names
    the flag), all of it before the first network call (a steering monitor with a static policy included); `check`
    runs on the loaded model (bound to its `conditions`) after the plan and the monitors are built. `finish` is the
    `--finish` spec of monitor-ended samples (None: `finish.DEFAULT_FINISH`). Sample i takes prompt i mod P or label
    i mod L and its noise from (seed, i), whatever its batch. The samples are returned, not written (the command
    writes its outputs, see `outputs.py`); if the model produces NaN or Inf, the batches finished before it are saved
    next to `save`, as <save>.partial.npy (a latent model's latents)."""
    # the library, torch included, is imported only when a command runs (`--help` stays fast)
    from adaptive_sampler import distributed
    from adaptive_sampler.models import load_model, resolve_device
    from adaptive_sampler.monitors import AnyOf, LPIPSWeightsMissingError, monitor_from_spec
    from adaptive_sampler.monitors.space import decode_cost
    from adaptive_sampler.pipeline import Conditions
    from adaptive_sampler.policies import make_policy
    from adaptive_sampler.policies.learned import check_solver
    from adaptive_sampler.policies.step_size_control import SteeredPlan, check_steered, parse_dynamic_policy
    from adaptive_sampler.sampler import NonFiniteOutputError
    from adaptive_sampler.solvers import make_solver

    check_numbers(n, batch_size, seed, network_rows, eta)
    finish_mode = check_finish(finish, monitor)
    torch_device = resolve_device(device)
    if timesteps is not None and policy not in ("uniform", "explicit"):
        raise FieldError("timesteps", timesteps,
                         f"is given together with --policy {policy!r}; an explicit list is its own policy")
    dynamic = policy.startswith(DYNAMIC_POLICIES)
    if dynamic and steps is not None:
        raise FieldError("steps", steps, f"is not allowed with --policy {policy}; each sample picks its own steps "
                                         "(adaptive: the controller; steered:N: N to start with, then the monitor)")
    policy_name = "explicit" if timesteps is not None else policy
    wanted = Conditions.from_flags(**asdict(conditions or ConditionFlags()))  # a prompts file is read here
    rows = decode_rows(network_rows)  # the VAE decodes in fixed chunks too
    try:
        update_rule = make_solver(solver)
        controller = parse_dynamic_policy(policy) if dynamic else None
        loaded = load_model(model, allow_pickle=allow_pickle, device=torch_device, height=height, width=width,
                            dtype=dtype)
        loaded = loaded.with_conditions(wanted)  # checked against the model; each distinct prompt encoded once
        adapter = loaded.adapter(network_rows=row_spec(network_rows))
        if isinstance(controller, SteeredPlan):
            check_steered(controller, policy, adapter.schedule.num_train_timesteps)
        planned: list[int] | None = None
        plan: StepSizeControl | SteeredPlan | list[int]
        if controller is None:
            chosen = make_policy(policy_name, _parse_timesteps(timesteps))
            check_solver(chosen, solver)  # a schedule file or catalogue entry made for another solver is refused
            planned = chosen.timesteps(steps, adapter.schedule).tolist()
            plan = planned
        else:
            plan = controller
        # one AnyOf over every --monitor, so it can say which of them stopped each sample
        decode = (lambda x: loaded.decode(x, rows)) if loaded.decoder is not None else None
        built = [monitor_from_spec(spec, model=loaded.name, num_steps=len(planned) if planned else None,
                                   decode=decode) for spec in monitor or ()]
        # a static list cannot be steered: the core would refuse it at the first step, this before any network call
        for spec, built_monitor in zip(monitor or (), built, strict=True):
            steering = steering_terms(built_monitor) if planned is not None else []
            if steering:
                term = f" ({', '.join(steering)})" if steering != [built_monitor.spec()] else ""  # in a composite
                raise FieldError("monitor", spec, f"steers step sizes{term}, but policy {policy_name!r} is a static "
                                                  "list, which cannot change its steps; use --policy steered:N or "
                                                  "adaptive:TOLERANCE")
        watch = AnyOf(*built) if built else None
        if check is not None:
            check(loaded)
        result = distributed.sample(adapter, plan, loaded.sample_shape, n, batch_size=batch_size, seed=seed,
                        eta=eta, progress=True, solver=update_rule, monitor=watch,
                        conditioning=loaded.conditioning, finish=finish_mode)
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
    start = time.perf_counter()
    images = loaded.decode(result.samples.to(torch_device), rows).float().cpu()
    indices = range(n)
    bound = loaded.conditions
    return Drawn(loaded, controller.name if controller else policy_name, result, planned, stopped_by, images=images,
                 prompts=bound.prompts_for(indices) if bound is not None else None,
                 labels=bound.labels_for(indices) if bound is not None else None,
                 decode_s=time.perf_counter() - start if loaded.decoder is not None else 0.0,
                 finish=finish_mode.spec() if watch is not None else None, monitor_decode=decode_cost(watch))
