"""`tune()`: a whole schedule search from `TuneOptions`, the library call behind `adaptive-sampler tune`.

It loads the model, opens the storage, runs (or resumes) the studies and, with `export`, scores the best lists on
held-out seeds and writes them as catalogue files with plots. Optuna's logging is left to the caller, e.g.
`optuna.logging.set_verbosity(optuna.logging.WARNING)`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from adaptive_sampler.model_adapter import RowPolicy, row_spec_from_text
from adaptive_sampler.models import load_model, resolve_device
from adaptive_sampler.schedules.artifact import ScheduleArtifact
from adaptive_sampler.tuning.export import ExportResult, export_best, schedule_artifact
from adaptive_sampler.tuning.settings import TuneOptions
from adaptive_sampler.tuning.storage import open_storage
from adaptive_sampler.tuning.study import BudgetBest, TrialReport, Tuner, TuneRun


@dataclass(frozen=True)
class TuneResult:
    """What `tune()` did.

    `studies` are the Optuna studies by step count (`{None: study}` in pareto mode), for `trials_dataframe()` or
    `optuna.visualization`; `artifacts` the best schedule per step count, ready to `.save()` or to hand to
    `use_schedule(pipe, artifact)` (with held-out scores in `metrics` when exported); `export` the files written
    and the held-out scores of the learned lists and the built-in policies (None without `export`).
    """

    studies: dict[int | None, optuna.Study]
    best: list[BudgetBest]
    artifacts: dict[int, ScheduleArtifact]
    export: ExportResult | None
    run: TuneRun
    tuner: Tuner


def tune(
    options: TuneOptions | None = None,
    *,
    on_start: Callable[[Tuner, dict[str, list[int]]], None] | None = None,
    on_trial: Callable[[TrialReport], None] | None = None,
    on_wait: Callable[[str, int], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
    **fields: Any,
) -> TuneResult:
    """Search timestep schedules as `adaptive-sampler tune` does, resuming the studies stored under the same name.

    Args:
        options: every setting (the CLI's flags); None builds them from `fields`.
        on_start: called before the first trial with the tuner and, with `fail_running`, the trials marked failed
            per study.
        on_trial: called after each trial this process finishes.
        on_wait: called with a study name and the trials other workers are still running in it.
        on_progress: called with a line per held-out scoring when exporting.
        **fields: `TuneOptions` fields, e.g. `model=..., steps=(6, 10), trials=40` (they override `options`).

    Returns:
        The studies, the best trial and schedule artifact per step count, and the export (with `export`).
    """
    if options is None or fields:
        options = TuneOptions.model_validate((options.model_dump() if options is not None else {}) | fields)
    options.check_outputs()  # every output writable, the storage usable: before the model loads or a trial runs
    conditions = options.conditions()
    device = resolve_device(options.device)
    loaded = load_model(options.model, allow_pickle=options.allow_pickle, device=device,
                        height=options.height, width=options.width).with_conditions(conditions)
    tuner = Tuner(loaded, options.settings(), open_storage(options.storage),
                  network_rows=RowPolicy.parse(row_spec_from_text(options.network_rows), device),
                  cache_dir=options.cache_dir)
    marked = tuner.fail_running() if options.fail_running else {}
    if on_start is not None:
        on_start(tuner, marked)
    run = tuner.run(on_trial=on_trial, on_wait=on_wait)
    exported = None
    if options.export is None:
        artifacts = {b.steps: schedule_artifact(tuner, b, prompts_file=options.prompts) for b in run.best}
    else:
        plots = options.plots or Path("runs") / "tune" / re.sub(r"[^A-Za-z0-9_.-]", "_", tuner.base_name)
        exported = export_best(tuner, options.export, plots_dir=plots, baselines=options.baselines,
                               prompts_file=options.prompts, on_progress=on_progress)
        artifacts = {steps: ScheduleArtifact.load(path) for steps, path in exported.schedules.items()}
    studies = {steps: optuna.load_study(study_name=name, storage=tuner.storage)
               for steps, name in tuner.study_names().items()}
    return TuneResult(studies=studies, best=run.best, artifacts=artifacts, export=exported, run=run, tuner=tuner)


__all__ = ["TuneResult", "tune"]
