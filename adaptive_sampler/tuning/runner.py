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

from adaptive_sampler.errors import FieldError
from adaptive_sampler.model_adapter import row_spec_from_text
from adaptive_sampler.models import load_model, resolve_device
from adaptive_sampler.schedules.artifact import ScheduleArtifact
from adaptive_sampler.tuning.export import ExportResult, baseline_lists, export_best, schedule_artifact
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


@dataclass(frozen=True)
class TunePlan:
    """What a run will do per study, to be said before it starts: how many of `--trials` are warm starts and how
    many search, and what the held-out scoring of an export costs."""

    trials: int
    warm_starts: int  # per study; they count towards `trials`
    tuning_n: int
    heldout_n: int | None  # None: no export
    heldout_lists: int  # lists scored on the held-out seeds per budget: the learned one and the baselines
    reference_steps: int | None  # of the objective's many-step reference (None: it scores without one)
    steps: tuple[int, ...]

    @property
    def search_trials(self) -> int:
        """Trials per study beyond the warm starts (0: only warm starts run)."""
        return max(0, self.trials - self.warm_starts)

    def heldout_sample_steps(self) -> int:
        """Network passes per sample row of the export's held-out scoring (its reference included)."""
        if self.heldout_n is None:
            return 0
        passes = sum(self.heldout_lists * n for n in self.steps) + (self.reference_steps or 0)
        return self.heldout_n * passes


def plan(tuner: Tuner, options: TuneOptions) -> TunePlan:
    """The plan of `tune(options)` on `tuner` (the warm starts are counted as the studies will enqueue them)."""
    s = tuner.settings
    warm = max(tuner.warm_start_count(steps) for steps in tuner.study_names())
    return TunePlan(trials=s.trials, warm_starts=warm, tuning_n=tuner.tuning_seeds.n,
                    heldout_n=tuner.heldout_seeds.n if options.export is not None else None,
                    heldout_lists=1 + (len(baseline_lists(tuner, s.steps[0])) if options.baselines else 0),
                    reference_steps=s.reference_steps if tuner.objective.uses_reference else None, steps=s.steps)


def tune(
    options: TuneOptions | None = None,
    *,
    on_start: Callable[[Tuner, dict[str, list[int]], TunePlan], None] | None = None,
    on_trial: Callable[[TrialReport], None] | None = None,
    on_wait: Callable[[str, int], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
    **fields: Any,
) -> TuneResult:
    """Search timestep schedules as `adaptive-sampler tune` does, resuming the studies stored under the same name.

    Args:
        options: every setting (the CLI's flags); None builds them from `fields`.
        on_start: called before the first trial with the tuner, the trials marked failed per study (with
            `fail_running`) and the run's plan.
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
                  network_rows=row_spec_from_text(options.network_rows), cache_dir=options.cache_dir)
    if options.trials == 0 and options.export is not None and not tuner.best():
        raise FieldError("trials", 0, "runs no trial, and the storage holds no complete trial of "
                         f"{tuner.base_name!r} to export; give --trials 1 or more")
    marked = tuner.fail_running() if options.fail_running else {}
    if on_start is not None:
        on_start(tuner, marked, plan(tuner, options))
    run = tuner.run(on_trial=on_trial, on_wait=on_wait)
    exported = None
    if options.export is None:
        artifacts = {b.steps: schedule_artifact(tuner, b, prompts_file=options.prompts) for b in run.best}
    else:
        plots = options.plots or Path("runs") / "tune" / re.sub(r"[^A-Za-z0-9_.-]", "_", tuner.base_name)
        exported = export_best(tuner, options.export, plots_dir=plots, baselines=options.baselines,
                               prompts_file=options.prompts, on_progress=on_progress)
        artifacts = exported.artifacts
    return TuneResult(studies=tuner.stored_studies(), best=run.best, artifacts=artifacts, export=exported, run=run,
                      tuner=tuner)


__all__ = ["TunePlan", "TuneResult", "plan", "tune"]
