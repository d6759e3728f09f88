"""Tuning studies: per-budget single-objective studies (pruned) or one multi-objective study (quality vs NFE).

`per-budget` mode opens one study per step count N (`<study>:steps=N`) with a MedianPruner over the running value
after each chunk of tuning samples; `pareto` mode one study `<study>:pareto` with two objectives, quality and NFE,
over N ∈ steps (Optuna cannot prune it). The first trials are the warm starts: the DP initialiser, the shipped
catalogue entry, the built-in policies and Align Your Steps (the SD1.5 table interpolated to N).
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
import torch
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from adaptive_sampler._lazy import require_extra
from adaptive_sampler.errors import FieldError
from adaptive_sampler.metrics.feature_net import EMBEDDED_IMAGE_SHAPE
from adaptive_sampler.model_adapter import RowSpec
from adaptive_sampler.models import LoadedModel
from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.policies import make_policy
from adaptive_sampler.sampler import NonFiniteOutputError
from adaptive_sampler.schedules.artifact import ScheduleArtifact
from adaptive_sampler.schedules.catalogue import catalogue_dir, load_entry
from adaptive_sampler.timesteps import discretize, validate_timesteps
from adaptive_sampler.tuning.cache import DEFAULT_CACHE_DIR
from adaptive_sampler.tuning.dp_init import build_cost_matrix
from adaptive_sampler.tuning.evaluator import Evaluation, ScheduleEvaluator, model_identity
from adaptive_sampler.tuning.ld3 import LD3, LD3Settings
from adaptive_sampler.tuning.objectives import Objective
from adaptive_sampler.tuning.search_space import SearchSpace, encode_params, make_space, suggest_timesteps
from adaptive_sampler.tuning.seeds import SeedSet
from adaptive_sampler.tuning.settings import TuneSettings
from adaptive_sampler.tuning.storage import (
    SURPLUS,
    WARM_START,
    TrialCounts,
    WarmStart,
    WorkerSummary,
    check_study,
    fail_running_trials,
    ignoring_experimental_warnings,
    open_study,
    run_trials,
    trial_counts,
)

WARM_START_POLICIES = ("uniform", "leading", "trailing", "quadratic", "karras", "logsnr", "front-loaded", "ays")
AYS_ENTRY = "sd15/ays-10"


@dataclass(frozen=True)
class BudgetBest:
    """The best finished trial for one step count: its list, tuning score and where it came from."""

    steps: int
    timesteps: list[int]
    value: float
    metrics: dict[str, float]
    trial_number: int
    warm_start: str | None
    study_name: str


@dataclass(frozen=True)
class TrialReport:
    """One trial this worker finished, for progress output."""

    study_name: str
    steps: int | None
    number: int
    state: str
    value: float | None
    wall_s: float | None
    warm_start: str | None
    finished: int
    target: int


@dataclass(frozen=True)
class TuneRun:
    """What `Tuner.run` did: per study, the worker's summary; and the best trial per budget afterwards."""

    workers: dict[str, WorkerSummary]
    best: list[BudgetBest]
    wall_s: float


def builtin_warm_starts(steps: int, schedule: NoiseSchedule) -> dict[str, torch.Tensor]:
    """The built-in policies' N-step lists; AYS is the SD1.5 table log-linearly interpolated to N (rescaled if the
    model's T is not 1000)."""
    out = {name: make_policy(name).timesteps(steps, schedule) for name in WARM_START_POLICIES if name != "ays"}
    ays = load_entry(AYS_ENTRY, steps)
    T = schedule.num_train_timesteps
    points = np.asarray(ays.timesteps, dtype=np.float64) * (T - 1) / (ays.num_train_timesteps - 1)
    out["ays"] = discretize(points, T) if steps <= T else out["uniform"]
    return out


class Tuner:
    """Opens (or resumes) the studies of `settings` for `model` on `storage`, runs trials, reports the best."""

    def __init__(
        self,
        model: LoadedModel,
        settings: TuneSettings,
        storage: BaseStorage,
        *,
        network_rows: RowSpec = "auto",
        cache_dir: Path | None = DEFAULT_CACHE_DIR,
    ) -> None:
        self.model, self.settings, self.storage, self.cache_dir = model, settings, storage, cache_dir
        self.adapter = model.adapter(network_rows=network_rows)
        self.schedule = self.adapter.schedule
        T = self.schedule.num_train_timesteps
        too_many = [n for n in settings.steps if n > T]
        if too_many:
            raise FieldError("steps", too_many[0], f"is above the model's {T} training timesteps")
        self.space: SearchSpace = make_space(settings.space)
        self.objective: Objective = settings.scorer
        self.objective.check_shape(model.image_shape)
        self.tuning_seeds: SeedSet = self.objective.tuning_seeds(settings.tuning_n, settings.seed)
        self.heldout_seeds = SeedSet(settings.heldout_seed, (settings.heldout_samples,))
        if self.heldout_seeds.overlaps(self.tuning_seeds):
            raise FieldError(
                "heldout_seed", settings.heldout_seed, f"falls among the tuning seeds {self.tuning_seeds.seeds.start}…"
                f"{self.tuning_seeds.seeds.stop - 1}; held-out samples must be ones tuning never saw"
            )
        self.evaluator = ScheduleEvaluator(model, self.objective, self.tuning_seeds, solver=settings.solver,
                                           reference_steps=settings.reference_steps, batch_size=settings.batch_size,
                                           cache_dir=cache_dir, adapter=self.adapter)
        if settings.method in ("cmaes", "tpe+cmaes"):  # before any trial: tpe+cmaes needs it only halfway
            require_extra("cmaes", "cmaes", f"--method {settings.method}")
        if settings.method != "tpe" and settings.mode == "pareto":
            raise FieldError("method", settings.method, "needs --mode per-budget: CMA-ES and LD3 optimise one "
                                                        "objective per budget")
        kind = "ld3" if settings.method == "ld3" else settings.space
        # a conditioned model's default name ends in a hash of its conditions: other prompts or guidance, another study
        conditioned = "" if model.conditions is None else f"-c{model.conditions.identity()['sha256'][:8]}"
        default_name = f"{model.name}-{settings.solver}-{settings.objective}-{kind}{conditioned}"
        self.base_name = settings.study_name or default_name
        self._dp: dict[int, torch.Tensor] | None = None
        self.ld3: LD3 | None = None
        if settings.method == "ld3":
            self.ld3 = LD3(self.adapter, model.sample_shape, settings.solver)
            train = SeedSet(LD3Settings().train_seed, (settings.ld3_train_n,))
            if train.overlaps(self.tuning_seeds) or train.overlaps(self.heldout_seeds):
                raise FieldError("seed", settings.seed, f"makes the tuning or held-out seeds reach LD3's training "
                                                        f"seed {train.seed}; training noises must be their own")
        for steps, name in self.study_names().items():  # a clash with a stored study, before any sampling
            check_study(storage, name, self._config(steps))

    # --- names and configuration -----------------------------------------------------------------------------
    def study_names(self) -> dict[int | None, str]:
        """Study name per step count (per-budget mode), or {None: name} (pareto mode)."""
        if self.settings.mode == "pareto":
            return {None: f"{self.base_name}:pareto"}
        return {n: f"{self.base_name}:steps={n}" for n in self.settings.steps}

    def _config(self, steps: int | None) -> dict[str, Any]:
        """What a resuming run must share with the stored study: `TuneSettings.STUDY_KEYS`, the model, the tuning
        seeds, the budget (and the reference, for an objective that scores against one)."""
        s = self.settings
        dump = s.model_dump(mode="json")
        config: dict[str, Any] = {key: dump[key] for key in s.STUDY_KEYS}
        config.update({
            "model": model_identity(self.model),
            "tuning_seeds": {"seed": self.tuning_seeds.seed, "chunks": list(self.tuning_seeds.chunks)},
            "steps": steps if steps is not None else list(s.steps),
        })
        if self.objective.uses_reference:
            config["reference_steps"] = s.reference_steps
        config.update(self.objective.study_identity())  # a metric back-end and reference other than the default
        if s.method == "ld3":  # its trials are learning runs: their parameters are LD3's, not timesteps
            config["method"] = "ld3"
            config["ld3"] = {"iterations": s.ld3_iterations, "train_n": s.ld3_train_n,
                             "batch_size": s.ld3_batch_size}
        return config

    def _sampler(self, cmaes_from: dict[str, Any] | None = None) -> optuna.samplers.BaseSampler:
        """TPE, or CMA-ES (the `cmaes` package through Optuna) started at the parameters `cmaes_from`."""
        with ignoring_experimental_warnings():
            # x0 and sigma0 are deprecated since Optuna 4.9 (hence optuna<6) for source_trials, which estimates the
            # start from a whole population; a local search from one known good list needs exactly x0 and sigma0
            warnings.simplefilter("ignore", FutureWarning)
            if cmaes_from is not None:  # {}: no trial to start from, CMA-ES starts at the centre of the space
                return optuna.samplers.CmaEsSampler(x0=cmaes_from or None, sigma0=self.settings.cmaes_sigma0,
                                                    seed=self.settings.sampler_seed, warn_independent_sampling=False)
            return optuna.samplers.TPESampler(seed=self.settings.sampler_seed, multivariate=True, group=True,
                                              constant_liar=True)

    def _directions(self) -> list[Literal["minimize", "maximize"]]:
        direction = self.objective.direction
        return [direction, "minimize"] if self.settings.mode == "pareto" else [direction]

    # --- warm starts -------------------------------------------------------------------------------------------
    def dp_schedules(self) -> dict[int, torch.Tensor]:
        """The DP initialiser's list for every budget the grid allows (cost matrix cached on disk)."""
        if self._dp is None:
            s = self.settings
            matrix = build_cost_matrix(self.model, grid_size=min(s.dp_grid, self.schedule.num_train_timesteps),
                                       fine_steps=s.dp_fine_steps, n=s.dp_trajectories, seed=s.seed,
                                       adapter=self.adapter, cache_dir=self.cache_dir)
            self._dp = matrix.schedules(list(s.steps))
        return self._dp

    def shipped_list(self, steps: int) -> torch.Tensor | None:
        """The catalogue's learned N-step list for this model's weights and solver, if one ships: a search run
        again (more tuning samples, another method) starts from the last winner rather than below it."""
        path = catalogue_dir() / self.model.name / f"{self.settings.solver}-{steps}.json"
        if not path.is_file():
            return None
        entry = ScheduleArtifact.read(path, field="policy", shown=f"learned:{self.model.name}/{path.stem}")
        same = (entry.model.weights_sha256 == self.model.weights_sha256 and entry.solver == self.settings.solver
                and entry.num_train_timesteps == self.schedule.num_train_timesteps)
        return validate_timesteps(entry.timesteps, entry.num_train_timesteps) if same else None

    def warm_start_lists(self, steps: int, *, shipped: bool = True) -> dict[str, torch.Tensor]:
        """Warm-start lists for N steps by tag, in trial order: the DP initialiser first (the likeliest good
        start when the budget is small), the shipped catalogue entry (unless `shipped` is False), then the
        built-ins; identical lists are merged (`uniform+karras`)."""
        found = {"dp": self.dp_schedules().get(steps), "catalogue": self.shipped_list(steps) if shipped else None}
        lists = {tag: ts for tag, ts in found.items() if ts is not None} | builtin_warm_starts(steps, self.schedule)
        merged: dict[tuple[int, ...], list[str]] = {}
        for tag, ts in lists.items():
            decoded = self.space.decode(self.space.encode(ts, self.schedule), steps, self.schedule)
            merged.setdefault(tuple(decoded.tolist()), []).append(tag)
        return {"+".join(tags): torch.tensor(ts) for ts, tags in merged.items()}

    def warm_starts(self, steps_list: Sequence[int], pareto: bool) -> list[WarmStart]:
        """The warm-start trials a new study enqueues for `steps_list` (its budgets), in order."""
        out = []
        for n in steps_list:
            prefix = f"n{n}." if pareto else ""
            for tag, ts in self.warm_start_lists(n, shipped=self.settings.catalogue_warm_start).items():
                params: dict[str, Any] = encode_params(self.space, ts, self.schedule, prefix)
                if pareto:
                    params = {"steps": n, **params}
                out.append(WarmStart(tag=f"{tag}@{n}" if pareto else tag, params=params))
        return out

    def warm_start_count(self, steps: int | None) -> int:
        """How many warm-start trials the study of `steps` (None: the pareto study) enqueues when it is created."""
        s = self.settings
        if s.method == "ld3" and steps is not None:
            return len(self._ld3_warm_start(steps))
        if not s.warm_start:
            return 0
        return len(self.warm_starts(list(s.steps) if steps is None else [steps], pareto=steps is None))

    # --- objectives --------------------------------------------------------------------------------------------
    def _score(self, trial: optuna.Trial, timesteps: Sequence[float] | torch.Tensor, prune: bool = True) -> Evaluation:
        """Evaluate `timesteps` for `trial`, reporting each rung to its pruner (with `prune`)."""

        def on_rung(samples: int, value: float) -> None:
            trial.report(value, samples)
            if trial.should_prune():
                raise optuna.TrialPruned(f"{self.settings.objective}={value:.4g} after {samples} samples")

        result = self.evaluator.evaluate(timesteps, on_rung if prune else None)
        trial.set_user_attr("metrics", result.metrics)
        return result

    def _per_budget_objective(self, steps: int) -> Callable[[optuna.Trial], float]:
        def objective(trial: optuna.Trial) -> float:
            with _timed(trial):
                ts = suggest_timesteps(trial, self.space, steps, self.schedule)
                trial.set_user_attr("steps", steps)
                trial.set_user_attr("timesteps", ts.tolist())
                return self._score(trial, ts).value

        return objective

    def _ld3_objective(self, steps: int) -> Callable[[optuna.Trial], float]:
        """One LD3 learning run per trial, from a warm start; Optuna picks LD3's hyperparameters and the start."""
        # LD3's start is a categorical parameter, whose choices Optuna requires to stay the same within a study: a
        # catalogue entry shipped after the study began would change them, so LD3 starts from the fixed lists only.
        starts = self.warm_start_lists(steps, shipped=False)
        losses = ["pixel", "features"] if tuple(self.model.sample_shape) == EMBEDDED_IMAGE_SHAPE else ["pixel"]
        s = self.settings
        assert self.ld3 is not None  # noqa: S101 - set in __init__ for method ld3

        def objective(trial: optuna.Trial) -> float:
            with _timed(trial):
                hyper = LD3Settings(lr=trial.suggest_float("lr", 0.005, 0.2, log=True),
                                    ball_radius=trial.suggest_float("ball_radius", 0.0, 0.1),
                                    teacher_steps=trial.suggest_categorical("teacher_steps", [50, 100, 200]),
                                    loss=trial.suggest_categorical("loss", losses), iterations=s.ld3_iterations,
                                    train_n=s.ld3_train_n, batch_size=s.ld3_batch_size)
                init = str(trial.suggest_categorical("init", list(starts)))
                trial.set_user_attr("steps", steps)
                learned = self.ld3.learn(starts[init], hyper)  # type: ignore[union-attr]
                trial.set_user_attr("timesteps", learned.timesteps)
                trial.set_user_attr("ld3_loss", {"first": learned.initial_loss, "last": learned.losses[-1]})
                return self._score(trial, learned.timesteps).value

        return objective

    def _ld3_warm_start(self, steps: int) -> list[WarmStart]:
        """The first LD3 trial: LD3's defaults from the first warm start (the DP initialiser's list, if any)."""
        first = next(iter(self.warm_start_lists(steps, shipped=False)))
        defaults = LD3Settings().model_dump(include={"lr", "ball_radius", "teacher_steps", "loss"})
        return [WarmStart(tag=f"ld3 defaults from {first}", params={**defaults, "init": first})]

    def _pareto_objective(self) -> Callable[[optuna.Trial], tuple[float, float]]:
        def objective(trial: optuna.Trial) -> tuple[float, float]:
            with _timed(trial):
                steps = trial.suggest_categorical("steps", list(self.settings.steps))
                ts = suggest_timesteps(trial, self.space, int(steps), self.schedule, prefix=f"n{steps}.")
                trial.set_user_attr("steps", int(steps))
                trial.set_user_attr("timesteps", ts.tolist())
                result = self._score(trial, ts, prune=False)  # Optuna cannot prune multi-objective studies
                return result.value, result.nfe

        return objective

    # --- running -----------------------------------------------------------------------------------------------
    def open(self, steps: int | None, cmaes_from: dict[str, Any] | None = None) -> optuna.Study:
        """Create or resume the study for `steps` (None: the pareto study), warm starts enqueued first; with
        `cmaes_from`, its trials are sampled by CMA-ES started there."""
        s = self.settings
        pareto = steps is None
        name = self.study_names()[steps]
        pruner = optuna.pruners.NopPruner() if pareto else optuna.pruners.MedianPruner(
            n_startup_trials=s.pruner_startup_trials, n_warmup_steps=0)
        budgets: list[int] = list(s.steps) if steps is None else [steps]
        warm: Callable[[], list[WarmStart]] | None = None
        if s.method == "ld3" and steps is not None:
            warm = functools.partial(self._ld3_warm_start, steps)
        elif s.warm_start:
            warm = functools.partial(self.warm_starts, budgets, pareto)
        return open_study(self.storage, name, self._directions(), config=self._config(steps),
                          provenance={"settings": s.model_dump(mode="json")}, sampler=self._sampler(cmaes_from),
                          pruner=pruner, warm_starts=warm).study

    def fail_running(self) -> dict[str, list[int]]:
        """Mark RUNNING trials of this run's studies FAIL (use only when no other worker is alive)."""
        return {name: fail_running_trials(self.open(steps)) for steps, name in self.study_names().items()}

    def run(self, on_trial: Callable[[TrialReport], None] | None = None,
            on_wait: Callable[[str, int], None] | None = None) -> TuneRun:
        """Run every study to `settings.trials` finished trials (resuming what is stored), then collect the best."""
        start = time.perf_counter()
        if any(done < self.settings.trials for done in self.finished_counts().values()):
            self.evaluator.prepare()  # references / KID terms, before any trial is timed
            if self.settings.warm_start:
                self.dp_schedules()
        workers: dict[str, WorkerSummary] = {}
        s = self.settings
        for steps, name in self.study_names().items():
            study = self.open(steps)
            if steps is None:
                objective: Callable[[optuna.Trial], Any] = self._pareto_objective()
            elif s.method == "ld3":
                objective = self._ld3_objective(steps)
            else:
                objective = self._per_budget_objective(steps)

            def callback(study: optuna.Study, trial: FrozenTrial, steps: int | None = steps) -> None:
                if on_trial is None or trial.user_attrs.get(SURPLUS):
                    return
                value = trial.values[0] if trial.values else None
                on_trial(TrialReport(study.study_name, trial.user_attrs.get("steps", steps), trial.number,
                                     trial.state.name.lower(), value, trial.user_attrs.get("wall_s"),
                                     trial.user_attrs.get(WARM_START), trial_counts(study).finished,
                                     self.settings.trials))

            # a schedule whose samples turn NaN/Inf is a failed trial, not a reason to stop the search
            run = functools.partial(run_trials, callbacks=[callback], catch=(NonFiniteOutputError,),
                                    on_wait=functools.partial(on_wait, name) if on_wait else None)
            if steps is not None and s.method in ("cmaes", "tpe+cmaes"):
                # CMA-ES is a local search: it starts from the best trial so far (the best warm start for cmaes,
                # the best of TPE's first half for tpe+cmaes), with a small step size
                warm_count = self.warm_start_count(steps)
                handover = warm_count if s.method == "cmaes" else max(s.trials // 2, warm_count)
                run(study, objective, min(handover, s.trials))
                best = _best_trial(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                                   self.objective.direction == "maximize")
                study = self.open(steps, cmaes_from=best.params if best is not None else {})
            workers[name] = run(study, objective, s.trials)
        return TuneRun(workers=workers, best=self.best(), wall_s=time.perf_counter() - start)

    def stored_studies(self) -> dict[int | None, optuna.Study]:
        """The studies of `study_names` that exist, by step count."""
        names = set(optuna.study.get_all_study_names(self.storage))
        return {steps: optuna.load_study(study_name=name, storage=self.storage)
                for steps, name in self.study_names().items() if name in names}

    def trial_counts(self) -> dict[str, TrialCounts]:
        """Trials per state of each study now (all zero for studies that do not exist yet)."""
        stored = self.stored_studies()
        return {name: trial_counts(stored[steps]) if steps in stored else TrialCounts(0, 0, 0, 0)
                for steps, name in self.study_names().items()}

    def finished_counts(self) -> dict[str, int]:
        """Finished trials (complete + pruned, what `--trials` counts) per study now."""
        return {name: counts.finished for name, counts in self.trial_counts().items()}

    def best(self) -> list[BudgetBest]:
        """The best complete trial per step count, from the stored studies (budgets without one are left out)."""
        maximize = self.objective.direction == "maximize"
        out = []
        for steps, study in self.stored_studies().items():
            complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                        if "timesteps" in t.user_attrs]
            for n in ([steps] if steps is not None else list(self.settings.steps)):
                best = _best_trial([t for t in complete if t.user_attrs.get("steps") == n], maximize)
                if best is None:
                    continue
                out.append(BudgetBest(steps=n, timesteps=list(best.user_attrs["timesteps"]), value=best.values[0],
                                      metrics=dict(best.user_attrs.get("metrics", {})), trial_number=best.number,
                                      warm_start=best.user_attrs.get(WARM_START), study_name=study.study_name))
        return sorted(out, key=lambda b: b.steps)


@contextlib.contextmanager
def _timed(trial: optuna.Trial) -> Iterator[None]:
    """Record the block's wall time as the trial's `wall_s`, also when it fails or is pruned."""
    start = time.perf_counter()
    try:
        yield
    finally:
        trial.set_user_attr("wall_s", time.perf_counter() - start)


def _best_trial(trials: Sequence[FrozenTrial], maximize: bool) -> FrozenTrial | None:
    """The best of complete `trials`, or None; ties go to the earlier trial (a warm start before a search trial
    that found the same score)."""
    return min(trials, key=lambda t: (-t.values[0] if maximize else t.values[0], t.number), default=None)


__all__ = ["BudgetBest", "TrialReport", "TuneRun", "Tuner", "builtin_warm_starts"]
