"""`adaptive-sampler tune`: search timestep schedules with Optuna (the library is `adaptive_sampler.tuning`).

Its flags are the fields of `TuneOptions` (tuning/settings.py), built by `options_command` and validated once by
that model.
"""

from __future__ import annotations

import typer

from adaptive_sampler.cli.common import CliError, options_command
from adaptive_sampler.tuning.settings import TuneOptions


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

    def on_start(tuner: Tuner, marked: dict[str, list[int]]) -> None:
        nonlocal bar
        for name, numbers in marked.items():
            if numbers:
                typer.echo(f"{name}: marked running trials {numbers} as failed")
        started.append(tuner)
        finished.update(tuner.finished_counts())
        total = settings.trials * len(finished)
        typer.echo(f"{tuner.model.name}: {settings.mode} tuning of {settings.space} schedules for steps "
                   f"{list(settings.steps)} ({settings.objective}, {tuner.tuning_seeds.n} samples per trial, solver "
                   f"{settings.solver}); storage {where}; {sum(finished.values())}/{total} trials already finished")
        bar = tqdm(total=total, initial=min(sum(finished.values()), total), desc="tuning", unit="trial")

    def on_trial(report: TrialReport) -> None:
        finished[report.study_name] = report.finished
        bar.n = min(sum(finished.values()), bar.total)
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
        rivals = [b for b in exported.baselines if b.steps == score.steps]
        better = max if tuner.objective.direction == "maximize" else min
        best_builtin = better(rivals, key=lambda b: b.evaluation.value) if rivals else None
        uniform = next((b for b in rivals if b.label == "uniform"), None)
        versus = (f"; uniform {uniform.evaluation.value:.4g}" if uniform is not None else "") + (
            f"; best built-in {best_builtin.label} {best_builtin.evaluation.value:.4g}"
            if best_builtin is not None else "")
        typer.echo(f"  {score.steps:>3} steps: learned {score.evaluation.value:.4g}{versus} "
                   f"-> {exported.schedules[score.steps]}")
    typer.echo(f"plots: {exported.pareto_png}, {exported.timesteps_png}; report: {exported.report_json}")
