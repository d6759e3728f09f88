"""`adaptive-sampler eval`: sample, then score them with a metric back-end (`--features`, default the embedded
Fashion-MNIST feature space: FID/KID/precision/recall) against reference statistics (`--reference`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from adaptive_sampler.cli.common import decode_rows, options_command
from adaptive_sampler.cli.drawing import Drawn, draw
from adaptive_sampler.cli.outputs import OutputPaths, npy_bytes
from adaptive_sampler.errors import FieldError
from adaptive_sampler.options import EvalOptions

if TYPE_CHECKING:
    import torch

    from adaptive_sampler.metrics.backends import MetricBackend
    from adaptive_sampler.metrics.scoring import Reference
    from adaptive_sampler.pipeline import LoadedModel

_COLUMNS = {"fid": ("FID", ".3f"), "kid": ("KID", ".4f"), "precision": ("precision", ".3f"),
            "recall": ("recall", ".3f"), "clip_score": ("CLIP score", ".2f"), "psnr": ("PSNR dB", ".2f"),
            "ssim": ("SSIM", ".4f"), "lpips": ("LPIPS", ".4f"), "label_agreement": ("label agreement", ".3f")}


@options_command(EvalOptions)
def eval_command(options: EvalOptions) -> None:
    """Sample, then score them: FID/KID/precision/recall in the embedded Fashion-MNIST feature space by default
    (with FID and KID in the held-out space beside them), or with another metric back-end (--features) against
    reference statistics (--reference)."""
    from rich.console import Console
    from rich.table import Table

    from adaptive_sampler import distributed
    from adaptive_sampler.metrics.evaluation import EvaluationReport, check_embedded_space, score_samples

    outputs = OutputPaths.check(save=options.save, json=options.json_path)  # before any work; all-or-nothing
    if options.features != "embedded" or options.reference is not None:
        _eval_with_backend(outputs, options)
        return
    n, seed, solver, eta = options.n, options.seed, options.solver, options.eta
    drawn = draw(options, check=lambda m: check_embedded_space(m.image_shape, n))
    result, images = drawn.result, drawn.images
    metrics = distributed.score(images, bootstrap=options.bootstrap, seed=seed)  # torchrun: features gathered
    if not distributed.is_main():  # under torchrun, rank 0 writes and prints
        return
    # the held-out space: no search or calibration scores in it, so a list that fits the searched one shows here
    heldout = score_samples(images, bootstrap=options.bootstrap, seed=seed, space="heldout")
    report = EvaluationReport(metrics, result.nfe_mean, n, seed, result.wall_s)
    evals = f", evals {result.evals_mean:.1f}" if drawn.guided else ""
    table = Table(title=f"{drawn.loaded.name}: {solver}, {drawn.policy}, {drawn.steps_text}, η={eta}; "
                        f"NFE {result.nfe_mean:.1f}{evals}, n {n}, {result.wall_s:.1f} s")
    table.add_column("feature space")
    for column in ("FID", "KID", "precision", "recall"):
        table.add_column(column, justify="right")
    for space, scores in (("searched (embedded)", metrics), ("held-out", heldout)):
        table.add_row(space, f"{scores.fid:.3f}", f"{scores.kid:.4f}", f"{scores.precision:.3f}",
                      f"{scores.recall:.3f}")
    heldout_json = {k: v for k, v in asdict(heldout).items() if v is not None}
    _write(outputs, images, {**drawn.report(solver=solver, eta=eta), **report.to_json(heldout_space=heldout_json)})
    Console().print(table)


def _write(outputs: OutputPaths, images: torch.Tensor, report: dict[str, Any]) -> None:
    """`--save` (the images) and `--json` (`report`), where given, all or nothing."""
    contents: dict[str, bytes] = {}
    if "save" in outputs.paths:
        contents["save"] = npy_bytes(images.numpy().astype(np.float32))
    if "json" in outputs.paths:
        contents["json"] = (json.dumps(report, indent=2, default=vars) + "\n").encode()
    outputs.write(contents)


def _reference_images(drawn: Drawn, options: EvalOptions) -> torch.Tensor:
    """The many-step result of the same noise and conditions: `reference_steps` uniform steps of the run's solver,
    η = 0, as images (a latent model's decoded)."""
    from adaptive_sampler import distributed
    from adaptive_sampler.policies import Uniform
    from adaptive_sampler.solvers import make_solver

    adapter = drawn.loaded.adapter(network_rows=drawn.rows)
    plan = Uniform().timesteps(options.reference_steps, adapter.schedule).tolist()
    samples = distributed.sample(adapter, plan, drawn.loaded.sample_shape, options.n, batch_size=options.batch_size,
                                 seed=options.seed, solver=make_solver(options.solver), progress=True,
                                 conditioning=drawn.loaded.conditioning).samples
    return drawn.loaded.decode(samples.to(adapter.device), decode_rows(drawn.rows)).cpu()


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


def _eval_with_backend(outputs: OutputPaths, options: EvalOptions) -> None:
    """`eval` with a metric back-end (see `adaptive_sampler.metrics.backends`) and its reference."""
    from rich.console import Console
    from rich.table import Table

    from adaptive_sampler import distributed
    from adaptive_sampler.metrics.backends import ScoringBatch, make_backend
    from adaptive_sampler.metrics.scoring import MetricAccumulator, resolve_reference
    from adaptive_sampler.models import resolve_device

    backend = make_backend(options.features, device=resolve_device(options.device))
    ref = resolve_reference(backend, options.reference)
    n = options.n
    drawn = draw(options, check=lambda m: _check_backend(backend, ref, n, m, options.reference_steps,
                                                         options.bootstrap))
    result, images = drawn.result, drawn.images  # a latent model's decoded
    batch = ScoringBatch(images, prompts=drawn.prompts, labels=drawn.labels,
                         reference_images=(_reference_images(drawn, options)
                                           if backend.needs_reference_images else None))
    accumulator = MetricAccumulator(backend, ref)
    gathered = None
    if backend.feature_extractor is not None and ref is not None:  # torchrun: the feature batches over the ranks
        gathered = distributed.features(images, backend.feature_extractor)
    accumulator.add(batch, features=gathered)
    values = accumulator.values(bootstrap=options.bootstrap, seed=options.seed)
    if not values:
        raise FieldError("features", options.features, "gave no metric for this run: CLIP score needs prompts, FID "
                                                       "a --reference")
    if not distributed.is_main():
        return
    solver, eta = options.solver, options.eta
    table = Table(title=f"{drawn.loaded.name}: {solver}, {drawn.policy}, {drawn.steps_text}, η={eta}; {backend.spec}")
    shown = [name for name in _COLUMNS if name in values]
    for name in shown:
        table.add_column(_COLUMNS[name][0], justify="right")
    cost = ("NFE", "evals") if drawn.guided else ("NFE",)  # evals: rows through the network, 2 per guided step
    for column in (*cost, "n", "wall s"):
        table.add_column(column, justify="right")
    table.add_row(*(format(values[name], _COLUMNS[name][1]) for name in shown),
                  *(f"{v:.1f}" for v in (result.nfe_mean, result.evals_mean)[:len(cost)]), str(n),
                  f"{result.wall_s:.1f}")
    report = {**drawn.report(solver=solver, eta=eta), "features": backend.spec,
              "reference": ref.source if ref is not None else None, **values, "nfe_mean": result.nfe_mean, "n": n,
              "seed": options.seed, "wall_s": result.wall_s}
    if backend.needs_reference_images:
        report["reference_steps"] = options.reference_steps
    _write(outputs, images, report)
    Console().print(table)
