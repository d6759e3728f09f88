"""`adaptive-sampler eval`: sample, then score them with a metric back-end (`--features`, default the embedded
Fashion-MNIST feature space: FID/KID/precision/recall) against reference statistics (`--reference`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from adaptive_sampler.cli.common import (
    MAX_BOOTSTRAP,
    BatchOpt,
    ClassesOpt,
    ClassLabelsOpt,
    ConditionFlags,
    DeviceOpt,
    EtaOpt,
    FinishOpt,
    GuidanceOpt,
    HeightOpt,
    JsonOpt,
    ModelOpt,
    MonitorOpt,
    NegativePromptOpt,
    PickleOpt,
    PolicyOpt,
    PromptOpt,
    PromptsOpt,
    RowsOpt,
    SaveOpt,
    SeedOpt,
    SolverOpt,
    StepsOpt,
    TimestepsOpt,
    WidthOpt,
    decode_rows,
    draw,
    row_spec,
)
from adaptive_sampler.cli.outputs import OutputPaths, npy_bytes
from adaptive_sampler.errors import FieldError

if TYPE_CHECKING:
    import torch

    from adaptive_sampler.cli.common import Drawn
    from adaptive_sampler.metrics.backends import MetricBackend
    from adaptive_sampler.metrics.scoring import Reference
    from adaptive_sampler.models import LoadedModel

FeaturesOpt = Annotated[str, typer.Option(help=(
    "metric back-end: embedded (Fashion-MNIST features, shipped reference), inception:PATH (pytorch-fid weights "
    "file), clip:PATH (transformers CLIP folder: FID features and CLIP score), fidelity[:lpips[:NET]] (PSNR/SSIM/"
    "LPIPS to a many-step reference of the same noise) or label (class agreement)"))]
ReferenceOpt = Annotated[Path | None, typer.Option(help=(
    "reference statistics .npz (mu, sigma; from `adaptive-sampler stats`) in the --features space"))]
ReferenceStepsOpt = Annotated[int, typer.Option(help="steps of the many-step reference (--features fidelity)")]
_COLUMNS = {"fid": ("FID", ".3f"), "kid": ("KID", ".4f"), "precision": ("precision", ".3f"),
            "recall": ("recall", ".3f"), "clip_score": ("CLIP score", ".2f"), "psnr": ("PSNR dB", ".2f"),
            "ssim": ("SSIM", ".4f"), "lpips": ("LPIPS", ".4f"), "label_agreement": ("label agreement", ".3f")}


def eval_command(
    model: ModelOpt = "embedded", policy: PolicyOpt = "uniform", steps: StepsOpt = None,
    timesteps: TimestepsOpt = None, eta: EtaOpt = 0.0, solver: SolverOpt = "ddim", monitor: MonitorOpt = None,
    finish: FinishOpt = None,
    n: Annotated[int, typer.Option(help="number of samples; must exceed the feature dimension (128)")] = 2000,
    batch_size: BatchOpt = 64, seed: SeedOpt = 0, network_rows: RowsOpt = "auto", device: DeviceOpt = "auto",
    allow_pickle: PickleOpt = False,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamplings for 95% intervals of FID and KID")] = 0,
    features: FeaturesOpt = "embedded", reference: ReferenceOpt = None, reference_steps: ReferenceStepsOpt = 200,
    save: SaveOpt = None, json_path: JsonOpt = None,
    prompt: PromptOpt = None, prompts: PromptsOpt = None, negative_prompt: NegativePromptOpt = None,
    guidance_scale: GuidanceOpt = None, class_labels: ClassLabelsOpt = None, classes: ClassesOpt = None,
    height: HeightOpt = None, width: WidthOpt = None,
) -> None:
    """Sample, then score them: FID/KID/precision/recall in the embedded Fashion-MNIST feature space by default,
    or with another metric back-end (--features) against reference statistics (--reference)."""
    from rich.console import Console
    from rich.table import Table

    from adaptive_sampler import distributed
    from adaptive_sampler.metrics.evaluation import EvaluationReport, check_embedded_space

    if not 0 <= bootstrap <= MAX_BOOTSTRAP:
        raise FieldError("bootstrap", bootstrap, f"is outside [0, {MAX_BOOTSTRAP}]; pass 0 for no intervals or a "
                                                 "number of resamplings")
    outputs = OutputPaths.check(save=save, json=json_path)  # before any work; written all-or-nothing
    conditions = ConditionFlags(prompt, prompts, negative_prompt, guidance_scale, class_labels, classes)
    if features != "embedded" or reference is not None:
        _eval_with_backend(outputs, features, reference, reference_steps, bootstrap, dict(
            model=model, policy=policy, steps=steps, timesteps=timesteps, eta=eta, solver=solver, monitor=monitor,
            finish=finish, n=n, batch_size=batch_size, seed=seed, network_rows=network_rows, device=device,
            allow_pickle=allow_pickle, height=height, width=width, conditions=conditions))
        return
    drawn = draw(model, policy, steps, timesteps, eta, solver, monitor, n, batch_size, seed, network_rows, device,
                 allow_pickle, outputs.get("save"), check=lambda m: check_embedded_space(m.image_shape, n),
                 conditions=conditions, height=height, width=width, finish=finish)
    loaded, policy_name, result = drawn.loaded, drawn.policy, drawn.result
    images = drawn.images if drawn.images is not None else result.samples
    metrics = distributed.score(images, bootstrap=bootstrap, seed=seed)  # torchrun: features gathered
    if not distributed.is_main():  # under torchrun, rank 0 writes and prints
        return
    report = EvaluationReport(metrics, result.nfe_mean, n, seed, result.wall_s)
    table = Table(title=f"{loaded.name}: {solver}, {policy_name}, {drawn.steps_text}, η={eta}")
    for column in ("FID", "KID", "precision", "recall", "NFE", "n", "wall s"):
        table.add_column(column, justify="right")
    table.add_row(f"{metrics.fid:.3f}", f"{metrics.kid:.4f}", f"{metrics.precision:.3f}", f"{metrics.recall:.3f}",
                  f"{result.nfe_mean:.1f}", str(n), f"{result.wall_s:.1f}")
    contents: dict[str, bytes] = {}
    if "save" in outputs.paths:
        contents["save"] = npy_bytes(images.numpy().astype(np.float32))
    if "json" in outputs.paths:
        payload = {**drawn.report(solver=solver, eta=eta), **report.to_json()}
        contents["json"] = (json.dumps(payload, indent=2, default=vars) + "\n").encode()
    outputs.write(contents)
    Console().print(table)


def _reference_images(drawn: Drawn, options: dict[str, Any], reference_steps: int) -> torch.Tensor:
    """The many-step result of the same noise and conditions: `reference_steps` uniform steps of the run's solver,
    η = 0, as images (a latent model's decoded)."""
    from adaptive_sampler import distributed
    from adaptive_sampler.policies import Uniform
    from adaptive_sampler.solvers import make_solver

    adapter = drawn.loaded.adapter(network_rows=row_spec(options["network_rows"]))
    plan = Uniform().timesteps(reference_steps, adapter.schedule).tolist()
    samples = distributed.sample(adapter, plan, drawn.loaded.sample_shape, options["n"],
                                 batch_size=options["batch_size"], seed=options["seed"],
                                 solver=make_solver(options["solver"]), progress=True,
                                 conditioning=drawn.loaded.conditioning).samples
    return drawn.loaded.decode(samples.to(adapter.device), decode_rows(options["network_rows"])).cpu()


def _check_backend(backend: MetricBackend, ref: Reference | None, n: int, loaded: LoadedModel,
                   reference_steps: int, bootstrap: int) -> None:
    """What can be refused before sampling: the sample shape, FID's n > d, a feature space with nothing to score,
    the many-step reference's step count, bootstrap intervals without reference features."""
    from adaptive_sampler.metrics.scoring import check_fid_n

    backend.check_shape(loaded.image_shape)
    if ref is not None:
        check_fid_n(backend, n)
    elif backend.feature_extractor is not None and not backend.metric_names:
        raise FieldError("reference", None, f"given; the {backend.spec!r} features have no shipped reference "
                                            "statistics: make them with `adaptive-sampler stats --images DIR "
                                            f"--features {backend.spec} --out ref.npz`")
    if bootstrap and (ref is None or ref.features is None):
        raise FieldError("bootstrap", bootstrap, "needs the reference's features (KID); an .npz reference holds only "
                                                 "mu and sigma, so pass 0")
    T = int(loaded.scheduler_config.get("num_train_timesteps", 1000))
    if backend.needs_reference_images and not 2 <= reference_steps <= T:
        raise FieldError("reference_steps", reference_steps, f"is outside [2, {T}] (the training timesteps)")


def _eval_with_backend(outputs: OutputPaths, features: str, reference: Path | None, reference_steps: int,
                       bootstrap: int, options: dict[str, Any]) -> None:
    """`eval` with a metric back-end (see `adaptive_sampler.metrics.backends`) and its reference."""
    from rich.console import Console
    from rich.table import Table

    from adaptive_sampler import distributed
    from adaptive_sampler.metrics.backends import ScoringBatch, make_backend
    from adaptive_sampler.metrics.scoring import MetricAccumulator, resolve_reference
    from adaptive_sampler.models import resolve_device

    backend = make_backend(features, device=resolve_device(options["device"]))
    ref = resolve_reference(backend, reference)
    n = options["n"]
    drawn = draw(**options, save=outputs.get("save"),
                 check=lambda m: _check_backend(backend, ref, n, m, reference_steps, bootstrap))
    result = drawn.result
    images = drawn.images if drawn.images is not None else result.samples  # a latent model's decoded
    batch = ScoringBatch(images, prompts=drawn.prompts, labels=drawn.labels,
                         reference_images=(_reference_images(drawn, options, reference_steps)
                                           if backend.needs_reference_images else None))
    accumulator = MetricAccumulator(backend, ref)
    gathered = None
    if backend.feature_extractor is not None and ref is not None:  # torchrun: the feature batches over the ranks
        gathered = distributed.features(images, backend.feature_extractor)
    accumulator.add(batch, features=gathered)
    values = accumulator.values(bootstrap=bootstrap, seed=options["seed"])
    if not values:
        raise FieldError("features", features, "gave no metric for this run: CLIP score needs prompts, FID a "
                                               "--reference")
    if not distributed.is_main():
        return
    solver, eta = options["solver"], options["eta"]
    table = Table(title=f"{drawn.loaded.name}: {solver}, {drawn.policy}, {drawn.steps_text}, η={eta}; {backend.spec}")
    shown = [name for name in _COLUMNS if name in values]
    for name in shown:
        table.add_column(_COLUMNS[name][0], justify="right")
    for column in ("NFE", "n", "wall s"):
        table.add_column(column, justify="right")
    table.add_row(*(format(values[name], _COLUMNS[name][1]) for name in shown),
                  f"{result.nfe_mean:.1f}", str(n), f"{result.wall_s:.1f}")
    contents: dict[str, bytes] = {}
    if "save" in outputs.paths:
        contents["save"] = npy_bytes(images.numpy().astype(np.float32))
    if "json" in outputs.paths:
        payload = {**drawn.report(solver=solver, eta=eta), "features": backend.spec,
                   "reference": ref.source if ref is not None else None, **values, "nfe_mean": result.nfe_mean,
                   "n": n, "seed": options["seed"], "wall_s": result.wall_s}
        if backend.needs_reference_images:
            payload["reference_steps"] = reference_steps
        contents["json"] = (json.dumps(payload, indent=2, default=vars) + "\n").encode()
    outputs.write(contents)
    Console().print(table)
