"""The tune settings, declared once: each field is an `adaptive-sampler tune` flag (default, bound and help), its
validation, and part of the study's provenance.

`TuneSettings` decides the search (a `Tuner` takes it); `TuneOptions` adds the model (`ModelOptions`) and what only
the command needs (storage, export).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adaptive_sampler.errors import FieldError
from adaptive_sampler.options import ModelOptions

if TYPE_CHECKING:
    from adaptive_sampler.tuning.objectives import Objective


QUICK_N, QUICK_HELDOUT_N = 256, 64  # `--quick`: a first try in minutes


class TuneSettings(BaseModel):
    """What to tune and how (validated; errors name the field). `n`/`heldout_n` default per objective."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Settings a stored study must share with a run that resumes it (with the model, seeds and budget).
    STUDY_KEYS: ClassVar[tuple[str, ...]] = ("objective", "space", "solver", "mode")

    steps: tuple[int, ...] = Field((4, 6, 8, 10), min_length=1, description="step budgets (NFE), comma-separated")
    trials: int = Field(50, ge=0, description=(
        "finished trials (COMPLETE + PRUNED; failed and surplus ones are not counted) per budget (per-budget mode) "
        "or in all (pareto mode); a re-run tops up to this"))
    objective: str = Field("fid", description=(
        "a registered objective: fid or kid (embedded feature space by default, (1, 32, 32) models; fid also in "
        "--features inception:PATH|clip:PATH with --reference), fidelity or fidelity-lpips (PSNR / LPIPS to a "
        "many-step reference from the same noise; any model), clip-score (--features clip:PATH, prompts), label "
        "(class agreement, class-conditional models) or clip-at-fid (CLIP score at FID <= --fid-limit)"))
    features: str | None = Field(None, description=(
        "metric back-end of the objective: embedded, inception:PATH, clip:PATH, fidelity[:lpips[:NET]] or label; "
        "default the objective's own"))
    reference: Path | None = Field(None, description=(
        "reference statistics .npz (mu, sigma; from `adaptive-sampler stats`) in the --features space, for fid and "
        "clip-at-fid"))
    fid_limit: float | None = Field(None, gt=0, description="clip-at-fid: the FID the CLIP score is maximised under")
    space: Literal["free", "power", "karras", "logsnr"] = Field(
        "free", description="free (N increments), power, karras or logsnr (2-parameter families)")
    mode: Literal["per-budget", "pareto"] = Field("per-budget", description=(
        "per-budget (one pruned study per N) or pareto (one study, quality vs NFE, no pruning)"))
    solver: str = Field("ddim", description="sampling solver the schedules are tuned for")
    n: int | None = Field(None, gt=0, description="tuning samples per trial; default per objective "
                                                  "(fid 2048, kid 256, fidelity 64)")
    seed: int = Field(0, ge=0, description="tuning seeds are seed, seed+1, … (one per chunk of samples)")
    heldout_n: int | None = Field(None, gt=0, description=(
        "held-out samples for the exported scores; default per objective (fid/kid 500, fidelity 256)"))
    heldout_seed: int = Field(1_000_000, ge=0, description="seed of the held-out samples (never used for tuning)")
    reference_steps: int = Field(200, ge=2, description="steps of the fidelity reference (cached)")
    warm_start: bool = Field(True, description=(
        "enqueue the DP initialiser, the shipped catalogue list, every built-in policy and AYS as the first trials"))
    catalogue_warm_start: bool = Field(True, description=(
        "with --warm-start, also start from the catalogue's shipped list for this model, solver and budget; "
        "--no-catalogue-warm-start: any win over the built-ins is this search's own"))
    dp_grid: int = Field(50, ge=2, description="timesteps in the DP initialiser's grid")
    dp_trajectories: int = Field(8, ge=1, description="reference trajectories behind the DP cost matrix")
    dp_fine_steps: int = Field(200, ge=2, description="steps of the DP initialiser's reference trajectories")
    batch_size: int = Field(64, gt=0, description="samples per batch")
    sampler_seed: int | None = Field(None, ge=0, le=2**32 - 1, description=(
        "TPE seed in [0, 2^32 - 1] (give each worker its own); default random"))
    pruner_startup_trials: int = Field(5, ge=0, description="trials the median pruner lets finish before pruning")
    method: Literal["tpe", "cmaes", "tpe+cmaes", "ld3"] = Field("tpe", description=(
        "tpe (Optuna's TPE over the space), cmaes (CMA-ES from the best warm start), tpe+cmaes (TPE for half the "
        "trials, then CMA-ES from the best), or ld3 (timesteps learned by gradient descent through the solver; each "
        "trial is one learning run, and Optuna searches its learning rate, ball radius, teacher steps, loss and "
        "warm start)"))
    cmaes_sigma0: float = Field(0.05, gt=0, le=1, description=(
        "CMA-ES initial step size, in the search space scaled to [0, 1] per parameter"))
    ld3_iterations: int = Field(60, ge=1, description="ld3: optimiser steps per learning run")
    ld3_train_n: int = Field(100, ge=1, description="ld3: training noises (their own seed, never a scoring one)")
    ld3_batch_size: int = Field(20, ge=1, description="ld3: training noises per optimiser step")
    study_name: str | None = Field(None, min_length=1, description=(
        "study name; default <model>-<solver>-<objective>-<space>"))

    @field_validator("steps", mode="before")
    @classmethod
    def _parse_steps(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return tuple(int(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise ValueError("is not a comma-separated list of integers, e.g. 4,6,8,10") from None

    @field_validator("steps")
    @classmethod
    def _valid_steps(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        bad = [v for v in value if v < 1]
        if bad:
            raise ValueError(f"{bad[0]} is not a positive step count")
        if len(set(value)) != len(value):
            raise ValueError(f"{list(value)} repeats a step count")
        return tuple(sorted(value))

    @field_validator("objective")
    @classmethod
    def _registered_objective(cls, value: str) -> str:
        from adaptive_sampler.tuning.objectives import get_objective  # torch: only when a tune runs, not for --help

        get_objective(value)
        return value

    @field_validator("solver")
    @classmethod
    def _valid_solver(cls, value: str) -> str:
        from adaptive_sampler.solvers import make_solver

        make_solver(value)
        return value

    @property
    def scorer(self) -> Objective:
        """The registered objective these settings name, bound to `features`, `reference` and `fid_limit`."""
        from adaptive_sampler.tuning.objectives import get_objective

        return get_objective(self.objective).configured(self.features, self.reference, self.fid_limit)

    @property
    def tuning_n(self) -> int:
        return self.n if self.n is not None else self.scorer.default_n

    @property
    def heldout_samples(self) -> int:
        return self.heldout_n if self.heldout_n is not None else self.scorer.default_heldout_n


class TuneOptions(TuneSettings, ModelOptions):
    """Every option of `adaptive-sampler tune`: the settings, the model (its conditions are part of its identity,
    so a study resumes only with the same ones), and what only the command needs."""

    # the groups of `tune --help` (a field in none is listed under "Options")
    help_panels: ClassVar[dict[str, tuple[str, ...]]] = {
        "Model and conditioning": ("model", "prompt", "prompts", "negative_prompt", "guidance_scale",
                                   "guidance_interval", "class_labels", "classes", "height", "width", "allow_pickle"),
        "Search": ("steps", "trials", "solver", "space", "mode", "method", "seed", "n", "warm_start",
                   "catalogue_warm_start", "dp_grid", "dp_trajectories", "dp_fine_steps", "sampler_seed",
                   "pruner_startup_trials", "cmaes_sigma0", "ld3_iterations", "ld3_train_n", "ld3_batch_size"),
        "Scoring": ("objective", "features", "reference", "fid_limit", "heldout_n", "heldout_seed", "reference_steps",
                    "baselines", "quick"),
        "Storage and export": ("study_name", "storage", "export", "plots", "cache_dir", "fail_running"),
        "Devices": ("device", "network_rows", "batch_size"),
    }

    storage: str | None = Field(None, description=(
        "Optuna storage shared by all workers: a journal file (journal:FILE, or FILE.log/.journal/.jsonl; the "
        "default, runs/tune.journal, for workers on one machine) or an RDB URL (postgresql://…, mysql://…, "
        "sqlite:///FILE.db) with heartbeats, across machines"))
    export: Path | None = Field(None, description=(
        "write the best schedule per budget, scored on held-out seeds, to DIR/<model>/<solver>-<N>.json "
        "(DIR = policies, the catalogue of an editable install, makes it "
        "--policy learned:<model>/<solver>-<N>)"))
    plots: Path | None = Field(None, description=(
        "folder for pareto.png, timesteps.png and report.json when exporting; default runs/tune/<study>"))
    baselines: bool = Field(True, description="score every built-in policy on the held-out seeds for the Pareto plot")
    quick: bool = Field(False, description=(
        f"a first try: at most {QUICK_N} tuning samples per trial unless --n, {QUICK_HELDOUT_N} held-out samples "
        "unless --heldout-n, and no baselines"))
    cache_dir: Path = Field(Path("runs/cache"), description="cache of fidelity references and DP cost matrices")
    fail_running: bool = Field(False, description=(
        "first mark trials left RUNNING by a killed worker as failed (only when no other worker is alive); needed "
        "only for a journal on a disk shared between machines: RDB storages do this by heartbeat, and a run on "
        "the killed worker's machine by itself"))

    @model_validator(mode="before")
    @classmethod
    def _quick_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("quick"):
            return data
        from adaptive_sampler.tuning.objectives import get_objective

        try:
            default_n = get_objective(data.get("objective", "fid")).default_n
        except FieldError:
            return data  # the objective's own validator says what is wrong with it
        return data | {"n": data.get("n") or min(default_n, QUICK_N),
                       "heldout_n": data.get("heldout_n") or QUICK_HELDOUT_N, "baselines": False}

    def settings(self) -> TuneSettings:
        """The part of the options that decides the search."""
        return TuneSettings.model_validate({k: getattr(self, k) for k in TuneSettings.model_fields})

    def check_outputs(self) -> None:
        """Check, before any model is loaded or trial run and creating nothing, that every place the run writes to
        can be written and that the optional dependencies it needs are installed. Raises FieldError naming the
        field (StorageError for `storage`), MissingExtraError for a missing dependency."""
        from adaptive_sampler._lazy import require_extra
        from adaptive_sampler.tuning.storage import check_storage, unwritable_reason

        if self.method in ("cmaes", "tpe+cmaes"):
            require_extra("cmaes", "cmaes", f"--method {self.method}")
        if self.export is not None:
            require_extra("matplotlib", "plots", "--export (its plots)")

        check_storage(self.storage)
        folders: list[tuple[str, Path]] = [("cache_dir", self.cache_dir)]
        if self.export is not None:
            folders += [("export", self.export), ("plots", self.plots or Path("runs") / "tune")]
        for name, folder in folders:
            reason = unwritable_reason(folder, folder=True)
            if reason is not None:
                raise FieldError(name, str(folder), f"{reason}; it must be a folder this run can write to")


__all__ = ["TuneOptions", "TuneSettings"]
