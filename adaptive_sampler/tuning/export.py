"""Export the best schedule per budget as catalogue files, scored on held-out seeds, with a Pareto plot.

Each budget's best trial becomes `DIR/<model>/<solver>-<N>.json` (a `ScheduleArtifact`; with DIR `policies/`, it is
`--policy learned:<model>/<solver>-<N>`), its `metrics` holding the objective on held-out seeds (samples tuning
never saw) next to the tuning score. The plots compare it with every built-in policy on the same seeds.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from adaptive_sampler._lazy import require_extra
from adaptive_sampler.atomic_write import atomic_write_bytes
from adaptive_sampler.errors import FieldError
from adaptive_sampler.pipeline import BoundConditions
from adaptive_sampler.policies import STATIC_POLICIES, make_policy
from adaptive_sampler.schedules.artifact import ConditionsRecord, ModelIdentity, NoiseScheduleSpec, ScheduleArtifact
from adaptive_sampler.tuning.evaluator import Evaluation, ScheduleEvaluator
from adaptive_sampler.tuning.study import AYS_ENTRY, BudgetBest, Tuner, builtin_warm_starts


@dataclass(frozen=True)
class HeldoutScore:
    """A schedule (learned, or a built-in policy) scored on the held-out seeds."""

    label: str
    steps: int
    timesteps: list[int]
    evaluation: Evaluation


@dataclass(frozen=True)
class ExportResult:
    """Files written by `export_best` and the held-out scores behind them."""

    schedules: dict[int, Path]
    artifacts: dict[int, ScheduleArtifact]
    learned: list[HeldoutScore]
    baselines: list[HeldoutScore]
    pareto_png: Path | None
    timesteps_png: Path | None
    report_json: Path | None


def catalogue_model_name(name: str) -> str:
    """A model name usable as a catalogue folder (`<model>/<family>-<N>`): other characters become '-'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name).strip("-.") or "model"


def schedule_path(export_dir: Path, model_name: str, solver: str, steps: int) -> Path:
    """`DIR/<model>/<solver>-<N>.json`."""
    return Path(export_dir) / catalogue_model_name(model_name) / f"{solver}-{steps}.json"


def conditions_record(conditions: BoundConditions | None, prompts_file: Path | None = None) -> ConditionsRecord | None:
    """What a schedule file records of the conditions a model was bound to (None: an unconditional model).

    Args:
        conditions: the model's bound conditions (`LoadedModel.conditions`).
        prompts_file: the file the prompts were read from (its name is recorded), if any.
    """
    if conditions is None:
        return None
    prompts = conditions.prompts
    return ConditionsRecord(
        prompts_sha256=None if prompts is None else ConditionsRecord.prompts_digest(prompts),
        prompts_file=None if prompts is None or prompts_file is None else Path(prompts_file).name,
        negative_prompt=conditions.negative_prompt, guidance_scale=conditions.guidance_scale,
        guidance_interval=None if (interval := conditions.guidance_interval) is None else (interval.high, interval.low),
        labels=None if conditions.labels is None else list(conditions.labels))


def schedule_artifact(tuner: Tuner, best: BudgetBest, heldout: Evaluation | None = None,
                      prompts_file: Path | None = None) -> ScheduleArtifact:
    """The artifact of a budget's best trial: its metrics hold the tuning score and, if given, the held-out ones."""
    s, seeds = tuner.settings, tuner.tuning_seeds
    metrics: dict[str, float] = {}
    if heldout is not None:
        metrics = {f"heldout_{k}": float(v) for k, v in heldout.metrics.items()}
        metrics.update({"heldout_n": float(heldout.n), "heldout_seed": float(tuner.heldout_seeds.seed)})
    metrics.update({f"tuning_{s.objective}": float(best.value), "nfe": float(best.steps)})
    how = {"tpe": f"optuna TPE search over the '{s.space}' space",
           "cmaes": f"optuna CMA-ES search over the '{s.space}' space from the best warm start",
           "tpe+cmaes": f"optuna TPE then CMA-ES search over the '{s.space}' space",
           "ld3": f"LD3 discretisation learning through {s.solver} ({s.ld3_iterations} iterations on "
                  f"{s.ld3_train_n} training noises), its hyperparameters searched by optuna TPE"}[s.method]
    method = (f"{how} ({s.mode} study {best.study_name!r}, trial "
              f"{best.trial_number}{', warm start ' + best.warm_start if best.warm_start else ''})")
    objective = (f"{s.objective} on tuning seeds {seeds.seeds.start}..{seeds.seeds.stop - 1} "
                 f"(n={seeds.n}{f', reference {s.reference_steps} steps' if tuner.objective.uses_reference else ''})")
    return ScheduleArtifact.model_validate({
        "num_train_timesteps": tuner.schedule.num_train_timesteps, "timesteps": best.timesteps, "solver": s.solver,
        "model": ModelIdentity(name=tuner.model.name, weights_sha256=tuner.model.weights_sha256),
        "conditions": conditions_record(tuner.model.conditions, prompts_file),
        "noise_schedule": NoiseScheduleSpec.from_config(tuner.model.scheduler_config), "objective": objective,
        "metrics": metrics, "method": method,
    })


def baseline_lists(tuner: Tuner, steps: int) -> dict[str, torch.Tensor]:
    """Every built-in policy's N-step list, and AYS interpolated to N."""
    lists = {name: make_policy(name).timesteps(steps, tuner.schedule) for name in STATIC_POLICIES}
    lists[f"ays ({AYS_ENTRY.split('/')[0]}, interpolated)"] = builtin_warm_starts(steps, tuner.schedule)["ays"]
    return lists


def export_best(
    tuner: Tuner,
    export_dir: Path,
    *,
    plots_dir: Path | None = None,
    baselines: bool = True,
    on_progress: Callable[[str], None] | None = None,
    prompts_file: Path | None = None,
) -> ExportResult:
    """Score each budget's best trial (and, with `baselines`, every built-in policy) on the held-out seeds, write
    the schedules to `export_dir`, and the Pareto and timestep plots plus `report.json` to `plots_dir`. Each
    schedule file records the model's conditions (`conditions_record`; `prompts_file`: the file the prompts came
    from)."""
    best = tuner.best()
    if not best:
        raise FieldError("trials", tuner.settings.trials, "left the studies without a complete trial, so there is "
                         "nothing to export; run at least one trial that completes")
    if plots_dir is not None:  # before the held-out scoring, which takes long
        require_extra("matplotlib", "plots", "the export's plots")
    s = tuner.settings  # the tuner's objective on its held-out seeds
    evaluator = ScheduleEvaluator(tuner.model, tuner.objective, tuner.heldout_seeds, solver=s.solver,
                                  reference_steps=s.reference_steps, batch_size=s.batch_size,
                                  cache_dir=tuner.cache_dir, adapter=tuner.adapter, heldout_space=True)
    cache: dict[tuple[int, ...], Evaluation] = {}

    def score(label: str, steps: int, ts: list[int]) -> HeldoutScore:
        key = tuple(ts)
        if key not in cache:
            if on_progress is not None:
                on_progress(f"held-out {label}, {steps} steps")
            cache[key] = evaluator.evaluate(ts)
        return HeldoutScore(label, steps, list(ts), cache[key])

    schedules: dict[int, Path] = {}
    artifacts: dict[int, ScheduleArtifact] = {}
    learned = []
    for b in best:
        scored = score("learned", b.steps, b.timesteps)
        learned.append(scored)
        schedules[b.steps] = schedule_path(export_dir, tuner.model.name, s.solver, b.steps)
        artifacts[b.steps] = schedule_artifact(tuner, b, scored.evaluation, prompts_file)
        artifacts[b.steps].save(schedules[b.steps])  # atomic
    baseline_scores = [score(name, b.steps, ts.tolist()) for b in best
                       for name, ts in baseline_lists(tuner, b.steps).items()] if baselines else []
    pareto_png = timesteps_png = report_json = None
    if plots_dir is not None:
        pareto_png, timesteps_png = Path(plots_dir) / "pareto.png", Path(plots_dir) / "timesteps.png"
        plot_pareto(learned, baseline_scores, tuner.objective.label, pareto_png,
                    title=f"{tuner.model.name}, {s.solver}: held-out seed {tuner.heldout_seeds.seed}, "
                          f"n={tuner.heldout_seeds.n}")
        plot_timesteps(learned, tuner.schedule.num_train_timesteps, timesteps_png,
                       title=f"learned timesteps ({tuner.model.name}, {s.solver}, {s.objective})")
        report_json = Path(plots_dir) / "report.json"
        report = {
            "model": {"name": tuner.model.name, "weights_sha256": tuner.model.weights_sha256},
            "settings": s.model_dump(mode="json"),
            "heldout": {"seed": tuner.heldout_seeds.seed, "n": tuner.heldout_seeds.n},
            "learned": [_score_json(x) | {"file": str(schedules[x.steps])} for x in learned],
            "baselines": [_score_json(x) for x in baseline_scores],
        }
        atomic_write_bytes(report_json, (json.dumps(report, indent=2) + "\n").encode())
    return ExportResult(schedules, artifacts, learned, baseline_scores, pareto_png, timesteps_png, report_json)


def _score_json(score: HeldoutScore) -> dict[str, Any]:
    return {"label": score.label, "steps": score.steps, "timesteps": score.timesteps, **asdict(score.evaluation)}


@contextlib.contextmanager
def _plot(path: Path, title: str, xlabel: str, ylabel: str) -> Iterator[Any]:
    """Axes to draw on; on exit, titled, labelled, with grid and legend, saved as a PNG at `path` (atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    yield ax
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def plot_pareto(learned: list[HeldoutScore], baselines: list[HeldoutScore], ylabel: str, path: Path,
                title: str = "") -> None:
    """Held-out quality against NFE: the learned schedules (thick line) and each built-in policy (thin lines)."""
    from matplotlib.ticker import MaxNLocator

    with _plot(path, title, "NFE (network evaluations per sample)", ylabel) as ax:
        by_label: dict[str, list[HeldoutScore]] = {}
        for score in baselines:
            by_label.setdefault(score.label, []).append(score)
        for label, scores in by_label.items():
            scores = sorted(scores, key=lambda s: s.steps)
            ax.plot([s.evaluation.nfe for s in scores], [s.evaluation.value for s in scores], "o-", lw=1, ms=3,
                    alpha=0.8, label=label)
        learned = sorted(learned, key=lambda s: s.steps)
        ax.plot([s.evaluation.nfe for s in learned], [s.evaluation.value for s in learned], "k*-", lw=2.5, ms=10,
                label="learned", zorder=5)
        nfes = sorted({s.evaluation.nfe for s in [*learned, *baselines]})
        ax.set_xticks(nfes if len(nfes) <= 12 else MaxNLocator(integer=True).tick_values(nfes[0], nfes[-1]))
        ax.set_xlim(nfes[0] - 0.5, nfes[-1] + 0.5)


def plot_timesteps(learned: list[HeldoutScore], num_train_timesteps: int, path: Path, title: str = "") -> None:
    """The learned lists: timestep against step index, one line per budget."""
    from matplotlib.ticker import MaxNLocator

    with _plot(path, title, "step index", "timestep t") as ax:
        for score in sorted(learned, key=lambda s: s.steps):
            ax.plot(range(score.steps), score.timesteps, "o-", label=f"N={score.steps}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(-0.02 * num_train_timesteps, 1.02 * num_train_timesteps)
