"""`adaptive-sampler sample`: draw samples, write them as .npy, a PNG grid and a JSON report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from adaptive_sampler.cli.common import (
    BatchOpt,
    DeviceOpt,
    EtaOpt,
    JsonOpt,
    ModelOpt,
    MonitorOpt,
    PickleOpt,
    PolicyOpt,
    RowsOpt,
    SaveOpt,
    SeedOpt,
    SolverOpt,
    StepsOpt,
    TimestepsOpt,
    draw,
)
from adaptive_sampler.cli.outputs import OutputPaths, grid_bytes, npy_bytes


def sample_command(
    model: ModelOpt = "embedded", policy: PolicyOpt = "uniform", steps: StepsOpt = None,
    timesteps: TimestepsOpt = None, eta: EtaOpt = 0.0, solver: SolverOpt = "ddim", monitor: MonitorOpt = None,
    n: Annotated[int, typer.Option(help="number of samples")] = 16,
    batch_size: BatchOpt = 64, seed: SeedOpt = 0, network_rows: RowsOpt = 8, device: DeviceOpt = "auto",
    allow_pickle: PickleOpt = False,
    out: Annotated[Path | None, typer.Option(help="image grid of the samples (.png, .jpg, .bmp, .gif, .tif, .webp)")]
    = None,
    save: SaveOpt = None, json_path: JsonOpt = None,
) -> None:
    """Draw samples with a solver (DDIM by default) over a policy's timesteps."""
    from adaptive_sampler import distributed

    outputs = OutputPaths.check(save=save, json=json_path, out=out)  # before any work; written all-or-nothing
    drawn = draw(model, policy, steps, timesteps, eta, solver, monitor, n, batch_size, seed, network_rows, device,
                 allow_pickle, outputs.get("save"))
    result = drawn.result
    if not distributed.is_main():  # under torchrun, rank 0 writes and prints
        return
    samples_per_s = n / result.wall_s if result.wall_s > 0 else None
    report = drawn.report(n=n, seed=seed, eta=eta, solver=solver, batch_size=batch_size,
                          network_rows=network_rows or None, samples_per_s=samples_per_s)
    contents: dict[str, bytes] = {}
    if "save" in outputs.paths:
        contents["save"] = npy_bytes(result.samples.numpy().astype(np.float32))
    if "out" in outputs.paths:
        contents["out"] = grid_bytes(result.samples, outputs.paths["out"])
    if "json" in outputs.paths:
        contents["json"] = (json.dumps(report, indent=2) + "\n").encode()
    outputs.write(contents)
    typer.echo(f"{n} samples, {drawn.steps_text} ({drawn.policy}, {solver}), "
               f"NFE mean {result.nfe_mean:.1f}, {result.wall_s:.1f} s ({samples_per_s:.1f} samples/s)")
