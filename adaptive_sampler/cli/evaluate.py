"""`adaptive-sampler eval`: sample, then score FID/KID/precision/recall in the embedded feature space."""

from __future__ import annotations

import json
from typing import Annotated

import numpy as np
import typer

from adaptive_sampler.cli.common import (
    MAX_BOOTSTRAP,
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
from adaptive_sampler.cli.outputs import OutputPaths, npy_bytes
from adaptive_sampler.errors import FieldError


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

    from adaptive_sampler import distributed
    from adaptive_sampler.metrics.evaluation import EvaluationReport, check_embedded_space

    if not 0 <= bootstrap <= MAX_BOOTSTRAP:
        raise FieldError("bootstrap", bootstrap, f"is outside [0, {MAX_BOOTSTRAP}]; pass 0 for no intervals or a "
                                                 "number of resamplings")
    outputs = OutputPaths.check(save=save, json=json_path)  # before any work; written all-or-nothing
    drawn = draw(model, policy, steps, timesteps, eta, solver, monitor, n, batch_size, seed, network_rows, device,
                 allow_pickle, outputs.get("save"), check=lambda m: check_embedded_space(m.sample_shape, n))
    loaded, policy_name, result = drawn.loaded, drawn.policy, drawn.result
    metrics = distributed.score(result.samples, bootstrap=bootstrap, seed=seed)  # torchrun: features gathered
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
        contents["save"] = npy_bytes(result.samples.numpy().astype(np.float32))
    if "json" in outputs.paths:
        payload = {**drawn.report(solver=solver, eta=eta), **report.to_json()}
        contents["json"] = (json.dumps(payload, indent=2, default=vars) + "\n").encode()
    outputs.write(contents)
    Console().print(table)
