"""`adaptive-sampler tune`: search timestep schedules with Optuna (the library is `adaptive_sampler.tuning`).

Its flags are the fields of `TuneOptions` (tuning/settings.py), built by `options_command` and validated once by
that model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from adaptive_sampler.cli.common import CliError, options_command
from adaptive_sampler.tuning.settings import TuneOptions

if TYPE_CHECKING:  # the command imports torch and optuna only when it runs, not for --help
    from adaptive_sampler.tuning.export import HeldoutScore
    from adaptive_sampler.tuning.runner import TunePlan


@options_command(TuneOptions)
def tune_command(options: TuneOptions) -> None:
    """Search timestep schedules with Optuna: quality vs step count, exported for any pipeline.

    Re-running the same command resumes its studies: finished trials are kept,
    only the missing ones run. Ctrl-C loses only the trial in flight.

    Several workers: start the same command in several processes or machines
    with one --storage (a journal file on one machine, a PostgreSQL or MySQL
    URL across machines); together they finish exactly --trials trials per
    study, none twice. Give each worker its own --sampler-seed (or none).
    """
    import optuna
    from tqdm.auto import tqdm

    from adaptive_sampler.tuning.runner import tune
    from adaptive_sampler.tuning.storage import DEFAULT_STORAGE, TrialsKeepFailing
    from adaptive_sampler.tuning.study import TrialReport, Tuner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = options.settings()
    where = options.storage or f"journal {DEFAULT_STORAGE}"
    started: list[Tuner] = []
    finished: dict[str, int] = {}
    bar = tqdm(total=0, desc="tuning", unit="trial", disable=True)

    plan: TunePlan | None = None
    walls: list[tuple[float, int | None]] = []  # this process's trials: wall time, steps of a complete one

    def on_start(tuner: Tuner, marked: dict[str, list[int]], run_plan: TunePlan) -> None:
        nonlocal bar, plan
        for name, numbers in marked.items():
            if numbers:
                typer.echo(f"{name}: marked running trials {numbers} as failed")
        started.append(tuner)
        plan = run_plan
        finished.update(tuner.finished_counts())
        total = settings.trials * len(finished)
        typer.echo(f"{tuner.model.name}: {settings.mode} tuning of {settings.space} schedules for steps "
                   f"{list(settings.steps)} ({settings.objective}, {tuner.tuning_seeds.n} samples per trial, solver "
                   f"{settings.solver}); storage {where}; {sum(finished.values())}/{total} trials already finished")
        if sum(finished.values()) < total:
            typer.echo(plan_line(run_plan, settings.method))
        bar = tqdm(total=total, initial=min(sum(finished.values()), total), desc="tuning", unit="trial")

    def on_trial(report: TrialReport) -> None:
        finished[report.study_name] = report.finished
        bar.n = min(sum(finished.values()), bar.total)
        if report.wall_s is not None and plan is not None:
            walls.append((report.wall_s, report.steps if report.state == "complete" else None))
            left = time_left(plan, walls, bar.total - bar.n)
            if left is not None:
                bar.set_postfix_str(left)
        bar.refresh()
        value = f"{report.value:.4g}" if report.value is not None else "-"
        warm = f"  [warm start: {report.warm_start}]" if report.warm_start else ""
        wall = f"{report.wall_s:.2f} s" if report.wall_s is not None else "-"
        tqdm.write(f"steps={report.steps} trial {report.number:>4} {report.state:8s} {settings.objective}={value} "
                   f"({wall}){warm}")

    def on_wait(name: str, running: int) -> None:
        bar.set_postfix_str(f"waiting for {running} trial(s) of other workers in {name}")

    def on_progress(message: str) -> None:
        bar.close()  # the search is over: its bar must not redraw between the scoring lines
        typer.echo(f"  scoring {message}")

    try:
        result = tune(options, on_start=on_start, on_trial=on_trial, on_wait=on_wait, on_progress=on_progress)
    except KeyboardInterrupt:
        bar.close()
        if not started:
            raise typer.Abort() from None
        done = sum(started[0].finished_counts().values())
        typer.echo(f"interrupted: {done}/{bar.total} trials are stored in {where}; the trial in flight is marked "
                   "failed. Re-run the same command to resume.", err=True)
        raise typer.Abort() from None
    except TrialsKeepFailing as exc:
        raise CliError(str(exc)) from None
    finally:
        bar.close()

    tuner, run = result.tuner, result.run
    stopped = [name for name, w in run.workers.items() if w.stopped_early]
    if stopped:
        typer.echo(f"note: {', '.join(stopped)} still has trials running elsewhere; if their workers are dead, "
                   "re-run with --fail-running")
    for name, counts in tuner.trial_counts().items():
        typer.echo(f"{name}: {counts.finished}/{settings.trials} trials finished (--trials counts complete + pruned): "
                   f"{counts.complete} complete, {counts.pruned} pruned; {counts.failed} failed, not counted")
    for b in run.best:
        warm = f", warm start {b.warm_start}" if b.warm_start else ""
        typer.echo(f"best {b.steps:>3} steps: {settings.objective}={b.value:.4g} (trial {b.trial_number}{warm}) "
                   f"{b.timesteps}")
    typer.echo(f"tuning took {run.wall_s:.1f} s")
    exported = result.export
    if exported is None:
        return
    typer.echo(f"held-out {settings.objective} (seed {tuner.heldout_seeds.seed}, n={tuner.heldout_seeds.n}):")
    for score in exported.learned:
        typer.echo(f"  {score.steps:>3} steps: {heldout_line(score, exported.baselines, tuner.objective.direction)} "
                   f"-> {exported.schedules[score.steps]}")
    typer.echo(f"plots: {exported.pareto_png}, {exported.timesteps_png}; report: {exported.report_json}")


def plan_line(plan: TunePlan, method: str) -> str:
    """The plan of a run in one line: warm starts and search trials per study, and the held-out scoring."""
    if plan.search_trials == 0:
        head = (f"plan: only warm starts run: --trials {plan.trials} <= {plan.warm_starts} warm starts per study, so "
                f"no search trial (give --trials above {plan.warm_starts} to search)")
    else:
        search = {"cmaes": "CMA-ES", "tpe+cmaes": "TPE then CMA-ES", "ld3": "LD3"}.get(method, "TPE")
        head = f"plan per study: {plan.warm_starts} warm starts, then {plan.search_trials} {search} trials"
    head += f"; {plan.tuning_n} tuning samples per trial"
    if plan.heldout_n is not None:
        head += (f"; then the best list and {plan.heldout_lists - 1} built-ins per budget on {plan.heldout_n} "
                 "held-out samples" + (f" (reference: {plan.reference_steps} steps)" if plan.reference_steps else ""))
    return head


def time_left(plan: TunePlan, walls: list[tuple[float, int | None]], trials_left: int) -> str | None:
    """"≈ N min left": the remaining trials at this process's mean trial time, plus the held-out scoring at the
    seconds per sample and step of its complete trials (None before a trial has completed)."""
    per_pass = [wall / (plan.tuning_n * steps) for wall, steps in walls if steps]
    if not per_pass:
        return None
    search = trials_left * sum(wall for wall, _ in walls) / len(walls)
    heldout = plan.heldout_sample_steps() * sorted(per_pass)[len(per_pass) // 2]
    return f"≈ {(search + heldout) / 60:.1f} min left" + (" incl. held-out scoring" if heldout else "")


def heldout_line(learned: HeldoutScore, baselines: list[HeldoutScore], direction: str) -> str:
    """The learned list's held-out score against uniform, the best built-in policy and the other baselines (AYS) of
    its step count, each with the learned list's change (a percentage for a score to minimise, else a difference)."""
    from adaptive_sampler.policies import STATIC_POLICIES

    maximize = direction == "maximize"

    def versus(rival: HeldoutScore) -> str:
        mine, theirs = learned.evaluation.value, rival.evaluation.value
        change = f"{mine - theirs:+.3g}" if maximize else f"{(mine / theirs - 1) * 100:+.0f} %" if theirs else "-"
        return f"{rival.label} {theirs:.4g} (learned {change})"

    rivals = [b for b in baselines if b.steps == learned.steps]
    policies = [b for b in rivals if b.label in STATIC_POLICIES]
    best = max(policies, key=lambda b: b.evaluation.value if maximize else -b.evaluation.value, default=None)
    shown = [b for b in policies if b.label == "uniform"] + ([best] if best and best.label != "uniform" else [])
    line = f"learned {learned.evaluation.value:.4g}"
    if shown:
        line += "; vs " + ", best built-in ".join(versus(b) for b in shown)
    others = [b for b in rivals if b.label not in STATIC_POLICIES]
    return line + "".join(f"; {versus(b)}" for b in others)
