"""`adaptive-sampler sample`: draw samples, write them as .npy, a PNG grid and a JSON report."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import typer

from adaptive_sampler.cli.common import options_command
from adaptive_sampler.cli.drawing import draw
from adaptive_sampler.cli.outputs import OutputPaths, grid_bytes, npy_bytes
from adaptive_sampler.errors import FieldError
from adaptive_sampler.options import SampleOptions

if TYPE_CHECKING:
    from adaptive_sampler.pipeline import LoadedModel


@options_command(SampleOptions)
def sample_command(options: SampleOptions) -> None:
    """Draw samples with a solver (DDIM by default) over a policy's timesteps; a latent model's are decoded."""
    from adaptive_sampler import distributed
    from adaptive_sampler.model_adapter import row_spec_from_text

    # before any work; written all-or-nothing
    outputs = OutputPaths.check(save=options.save, json=options.json_path, out=options.out,
                                save_latents=options.save_latents)

    def check(loaded: LoadedModel) -> None:
        if options.save_latents is not None and loaded.decoder is None:
            raise FieldError("save_latents", str(options.save_latents), f"is for a latent model; {loaded.name!r} "
                             "samples pixels, which --save writes")

    drawn = draw(options, check)
    images, result, n = drawn.images, drawn.result, options.n
    if not distributed.is_main():  # under torchrun, rank 0 writes and prints
        return
    samples_per_s = n / result.wall_s if result.wall_s > 0 else None
    report = drawn.report(n=n, seed=options.seed, eta=options.eta, solver=options.solver,
                          batch_size=options.batch_size, network_rows=row_spec_from_text(options.network_rows),
                          dtype=options.dtype, samples_per_s=samples_per_s)
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
    typer.echo(f"{n} samples, {drawn.steps_text} ({drawn.policy}, {options.solver}), "
               f"{drawn.cost_text()}, {result.wall_s:.1f} s ({samples_per_s:.1f} samples/s)")
