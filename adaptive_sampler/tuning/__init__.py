"""Schedule search with Optuna: search spaces, objectives, a DP initialiser, studies, export.

`search_space` turns trial parameters into valid timestep lists, scored by an `objectives` plug-in on the samples
`evaluator` draws on fixed seeds (`seeds`); `dp_init` builds a warm start; `storage` opens studies shared by
workers; `settings` declares the tune options; `study` runs per-budget or Pareto studies; `export` writes the best
list per budget, scored on held-out seeds, as catalogue files with plots; `runner`'s `tune()` does it all from
`TuneOptions` (the library of `adaptive-sampler tune`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adaptive_sampler._lazy import lazy_exports

# public name -> the module of this package that defines it; imported on first use (the CLI's --help needs none)
_EXPORTS = {
    "BudgetBest": "study", "CostMatrix": "dp_init", "DPPath": "dp_init", "Evaluation": "evaluator",
    "ExportResult": "export", "FreeSpace": "search_space", "HeldoutScore": "export", "KarrasSpace": "search_space",
    "LogSNRSpace": "search_space", "OBJECTIVES": "objectives", "Objective": "objectives", "OpenedStudy": "storage",
    "PowerSpace": "search_space", "SPACES": "search_space", "ScheduleEvaluator": "evaluator", "Score": "objectives",
    "SearchSpace": "search_space", "SeedSet": "seeds", "TrialReport": "study", "TrialsKeepFailing": "storage",
    "TuneOptions": "settings", "TuneResult": "runner", "TuneRun": "study", "TuneSettings": "settings",
    "Tuner": "study", "tune": "runner",
    "WarmStart": "storage", "WorkerSummary": "storage", "best_paths": "dp_init", "build_cost_matrix": "dp_init",
    "enqueue_warm_starts": "storage", "export_best": "export", "fail_running_trials": "storage",
    "get_objective": "objectives", "make_space": "search_space", "open_storage": "storage", "open_study": "storage",
    "plot_pareto": "export", "plot_timesteps": "export", "register_objective": "objectives", "run_trials": "storage",
    "schedule_artifact": "export", "schedule_path": "export", "suggest_timesteps": "search_space",
}
__all__ = [
    "OBJECTIVES", "SPACES", "BudgetBest", "CostMatrix", "DPPath", "Evaluation", "ExportResult", "FreeSpace",
    "HeldoutScore", "KarrasSpace", "LogSNRSpace", "Objective", "OpenedStudy", "PowerSpace", "ScheduleEvaluator",
    "Score", "SearchSpace", "SeedSet", "TrialReport", "TrialsKeepFailing", "TuneOptions", "TuneResult", "TuneRun",
    "TuneSettings", "Tuner", "WarmStart", "WorkerSummary", "best_paths", "build_cost_matrix", "enqueue_warm_starts",
    "export_best", "fail_running_trials", "get_objective", "make_space", "open_storage", "open_study", "plot_pareto",
    "plot_timesteps", "register_objective", "run_trials", "schedule_artifact", "schedule_path", "suggest_timesteps",
    "tune",
]

__getattr__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from adaptive_sampler.tuning.dp_init import CostMatrix, DPPath, best_paths, build_cost_matrix
    from adaptive_sampler.tuning.evaluator import Evaluation, ScheduleEvaluator
    from adaptive_sampler.tuning.export import (
        ExportResult,
        HeldoutScore,
        export_best,
        plot_pareto,
        plot_timesteps,
        schedule_artifact,
        schedule_path,
    )
    from adaptive_sampler.tuning.objectives import OBJECTIVES, Objective, Score, get_objective, register_objective
    from adaptive_sampler.tuning.runner import TuneResult, tune
    from adaptive_sampler.tuning.search_space import (
        SPACES,
        FreeSpace,
        KarrasSpace,
        LogSNRSpace,
        PowerSpace,
        SearchSpace,
        make_space,
        suggest_timesteps,
    )
    from adaptive_sampler.tuning.seeds import SeedSet
    from adaptive_sampler.tuning.settings import TuneOptions, TuneSettings
    from adaptive_sampler.tuning.storage import (
        OpenedStudy,
        TrialsKeepFailing,
        WarmStart,
        WorkerSummary,
        enqueue_warm_starts,
        fail_running_trials,
        open_storage,
        open_study,
        run_trials,
    )
    from adaptive_sampler.tuning.study import BudgetBest, TrialReport, Tuner, TuneRun
