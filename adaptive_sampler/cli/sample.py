"""`adaptive-sampler sample`: draw samples, write them as .npy, a PNG grid and a JSON report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import torch
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


def _save_grid(samples: torch.Tensor, path: Path) -> None:
    from torchvision.utils import save_image

    save_image(samples[:, :3] * 0.5 + 0.5, path, nrow=max(1, math.ceil(math.sqrt(len(samples)))))


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
    drawn = draw(model, policy, steps, timesteps, eta, solver, monitor, n, batch_size, seed, network_rows, device,
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
