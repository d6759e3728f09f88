"""`adaptive-sampler sample`: draw samples, write them as .npy, a PNG grid and a JSON report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from adaptive_sampler.cli.common import (
    BatchOpt,
    ClassesOpt,
    ClassLabelsOpt,
    ConditionFlags,
    DeviceOpt,
    DtypeOpt,
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
    SaveLatentsOpt,
    SaveOpt,
    SeedOpt,
    SolverOpt,
    StepsOpt,
    TimestepsOpt,
    WidthOpt,
    draw,
    row_spec,
)
from adaptive_sampler.cli.outputs import OutputPaths, grid_bytes, npy_bytes
from adaptive_sampler.errors import FieldError

if TYPE_CHECKING:
    from adaptive_sampler.models import LoadedModel


def sample_command(
    model: ModelOpt = "embedded", policy: PolicyOpt = "uniform", steps: StepsOpt = None,
    timesteps: TimestepsOpt = None, eta: EtaOpt = 0.0, solver: SolverOpt = "ddim", monitor: MonitorOpt = None,
    finish: FinishOpt = None,
    n: Annotated[int, typer.Option(help="number of samples")] = 16,
    batch_size: BatchOpt = 64, seed: SeedOpt = 0, network_rows: RowsOpt = "auto", device: DeviceOpt = "auto",
    allow_pickle: PickleOpt = False,
    out: Annotated[Path | None, typer.Option(help="image grid of the samples (.png, .jpg, .bmp, .gif, .tif, .webp)")]
    = None,
    save: SaveOpt = None, save_latents: SaveLatentsOpt = None, json_path: JsonOpt = None,
    prompt: PromptOpt = None, prompts: PromptsOpt = None, negative_prompt: NegativePromptOpt = None,
    guidance_scale: GuidanceOpt = None, class_labels: ClassLabelsOpt = None, classes: ClassesOpt = None,
    height: HeightOpt = None, width: WidthOpt = None, dtype: DtypeOpt = "float32",
) -> None:
    """Draw samples with a solver (DDIM by default) over a policy's timesteps; a latent model's are decoded."""
    from adaptive_sampler import distributed

    # before any work; written all-or-nothing
    outputs = OutputPaths.check(save=save, json=json_path, out=out, save_latents=save_latents)

    def check(loaded: LoadedModel) -> None:
        if save_latents is not None and loaded.decoder is None:
            raise FieldError("save_latents", str(save_latents), f"is for a latent model; {loaded.name!r} samples "
                             "pixels, which --save writes")

    drawn = draw(model, policy, steps, timesteps, eta, solver, monitor, n, batch_size, seed, network_rows, device,
                 allow_pickle, outputs.get("save"), check, height=height, width=width, dtype=dtype, finish=finish,
                 conditions=ConditionFlags(prompt, prompts, negative_prompt, guidance_scale, class_labels, classes))
    images = drawn.images if drawn.images is not None else drawn.result.samples
    result = drawn.result
    if not distributed.is_main():  # under torchrun, rank 0 writes and prints
        return
    samples_per_s = n / result.wall_s if result.wall_s > 0 else None
    report = drawn.report(n=n, seed=seed, eta=eta, solver=solver, batch_size=batch_size,
                          network_rows=row_spec(network_rows), dtype=dtype, samples_per_s=samples_per_s)
    contents: dict[str, bytes] = {}
    if "save" in outputs.paths:
        contents["save"] = npy_bytes(images.numpy().astype(np.float32))
    if "save_latents" in outputs.paths:
        contents["save_latents"] = npy_bytes(result.samples.numpy().astype(np.float32))
    if "out" in outputs.paths:
        contents["out"] = grid_bytes(images, outputs.paths["out"])
    if "json" in outputs.paths:
        contents["json"] = (json.dumps(report, indent=2) + "\n").encode()
    outputs.write(contents)
    typer.echo(f"{n} samples, {drawn.steps_text} ({drawn.policy}, {solver}), "
               f"NFE mean {result.nfe_mean:.1f}, {result.wall_s:.1f} s ({samples_per_s:.1f} samples/s)")
