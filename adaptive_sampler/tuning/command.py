"""The `adaptive-sampler tune` command (mounted in cli.py with `app.command("tune")(tune_command)`)."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    pass

_FLAG_OF_FIELD = {"num_steps": "--steps", "grid_size": "--dp-grid", "chunks": "--n", "n_trials": "--trials",
                  "url": "--storage"}


def _flag(field: str) -> str:
    return _FLAG_OF_FIELD.get(field, "--" + field.replace("_", "-"))


def _flag_error(exc: ValueError) -> Exception:
    """A field-named error ("steps: 0 is …" or a pydantic error) as a one-line CliError naming the flag."""
    from pydantic import ValidationError

    from adaptive_sampler.cli import CliError

    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        message = str(err["msg"]).removeprefix("Value error, ").removeprefix(f"{field}: ")
        return CliError(f"{_flag(field)}: {err.get('input')!r} — {message}")
    message = str(exc)
    field = message.split(":", 1)[0].split("[", 1)[0]
    if re.fullmatch(r"[a-z_]+", field):
        return CliError(_flag(field) + message[len(field):])
    return CliError(message)


def _parse_steps(text: str) -> list[int]:
    from adaptive_sampler.cli import CliError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CliError(f"--steps: {text!r} is not a comma-separated list of integers, e.g. 4,6,8,10") from None
    if not values:
        raise CliError("--steps: '' is empty; give at least one step count, e.g. 4,6,8,10")
    return values


def tune_command(
    model: Annotated[str, typer.Option(help="'embedded' or a diffusers model folder")] = "embedded",
    steps: Annotated[str, typer.Option(help="step budgets (NFE), comma-separated")] = "4,6,8,10",
    trials: Annotated[int, typer.Option(
        help="finished trials per budget (per-budget mode) or in all (pareto mode); a re-run tops up to this")] = 50,
    objective: Annotated[str, typer.Option(
        help="fid or kid (embedded feature space, (1, 32, 32) models) or fidelity (PSNR to a many-step reference "
             "from the same noise; any model)")] = "fid",
    space: Annotated[str, typer.Option(
        help="free (N increments), power, karras or logsnr (2-parameter families)")] = "free",
    mode: Annotated[str, typer.Option(
        help="per-budget (one pruned study per N) or pareto (one study, quality vs NFE, no pruning)")] = "per-budget",
    solver: Annotated[str, typer.Option(help="sampling solver the schedules are tuned for")] = "ddim",
    storage: Annotated[str | None, typer.Option(
        help="Optuna storage shared by all workers: sqlite:///FILE.db, postgresql://…, mysql://…, journal:FILE or "
             "FILE.log; default sqlite runs/tune.db")] = None,
    study_name: Annotated[str | None, typer.Option(
        help="study name; default <model>-<solver>-<objective>-<space>")] = None,
    export: Annotated[Path | None, typer.Option(
        help="write the best schedule per budget, scored on held-out seeds, to DIR/<model>/<solver>-<N>.json "
             "(DIR = adaptive_sampler/schedules, the catalogue of an editable install, makes it "
             "--policy learned:<model>/<solver>-<N>)")] = None,
    plots: Annotated[Path | None, typer.Option(
        help="folder for pareto.png, timesteps.png and report.json when exporting; default runs/tune/<study>")] = None,
    baselines: Annotated[bool, typer.Option(
        help="score every built-in policy on the held-out seeds for the Pareto plot")] = True,
    n: Annotated[int | None, typer.Option(
        help="tuning samples per trial; default fid 512, kid 256, fidelity 64")] = None,
    seed: Annotated[int, typer.Option(help="tuning seeds are seed, seed+1, … (one per chunk of samples)")] = 0,
    heldout_n: Annotated[int | None, typer.Option(
        help="held-out samples for the exported scores; default fid/kid 500, fidelity 256")] = None,
    heldout_seed: Annotated[int, typer.Option(help="seed of the held-out samples (never used for tuning)")] = 1_000_000,
    reference_steps: Annotated[int, typer.Option(help="steps of the fidelity reference (cached)")] = 200,
    warm_start: Annotated[bool, typer.Option(
        help="enqueue the DP initialiser, every built-in policy and AYS as the first trials")] = True,
    dp_grid: Annotated[int, typer.Option(help="timesteps in the DP initialiser's grid")] = 50,
    dp_trajectories: Annotated[int, typer.Option(help="reference trajectories behind the DP cost matrix")] = 8,
    sampler_seed: Annotated[int | None, typer.Option(
        help="TPE seed (give each worker its own); default random")] = None,
    batch_size: Annotated[int, typer.Option(help="samples per batch")] = 64,
    network_rows: Annotated[int, typer.Option(help="rows per network call; 0 = unbucketed")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, …")] = "auto",
    allow_pickle: Annotated[bool, typer.Option(help="allow pickled .bin/.pt weights (they can run code)")] = False,
    cache_dir: Annotated[Path, typer.Option(help="cache of fidelity references and DP cost matrices")] = Path(
        "runs/cache"),
    fail_running: Annotated[bool, typer.Option(
        help="first mark trials left RUNNING by a killed worker as failed (only when no other worker is alive; "
             "RDB storages do this by heartbeat)")] = False,
) -> None:
    """Search timestep schedules with Optuna: quality vs step count, exported for any pipeline.

    Re-running the same command resumes its studies: finished trials are kept,
    only the missing ones run. Ctrl-C loses only the trial in flight.

    Several workers: start the same command in several processes or machines
    with one --storage (a SQLite or journal file on one machine, a PostgreSQL or
    MySQL URL across machines); together they finish exactly --trials trials
    per study, none twice. Give each worker its own --sampler-seed (or none).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _quiet_interrupted_trial():
        _tune(**{name: value for name, value in locals().items() if name != "optuna"})


@contextlib.contextmanager
def _quiet_interrupted_trial() -> Iterator[None]:
    """Drop Optuna's warning (with a traceback) for the trial Ctrl-C interrupted: the command explains it itself."""
    interrupted: set[str] = set()

    def keep(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        trial = message.split(" failed", 1)[0]
        if message.startswith("Trial ") and "KeyboardInterrupt" in message:
            interrupted.add(trial)
            return False
        return trial not in interrupted

    logger = logging.getLogger("optuna.study._optimize")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _tune(model: str, steps: str, trials: int, objective: str, space: str, mode: str, solver: str,
          storage: str | None, study_name: str | None, export: Path | None, plots: Path | None, baselines: bool,
          n: int | None, seed: int, heldout_n: int | None, heldout_seed: int, reference_steps: int, warm_start: bool,
          dp_grid: int, dp_trajectories: int, sampler_seed: int | None, batch_size: int, network_rows: int,
          device: str, allow_pickle: bool, cache_dir: Path, fail_running: bool) -> None:
    """The body of `tune_command` (the same arguments)."""
    from tqdm.auto import tqdm

    from adaptive_sampler.cli import CliError
    from adaptive_sampler.models import load_model
    from adaptive_sampler.tuning.export import export_best
    from adaptive_sampler.tuning.storage import DEFAULT_STORAGE, TrialsKeepFailing, open_storage
    from adaptive_sampler.tuning.study import TrialReport, TuneSettings, Tuner

    try:
        settings = TuneSettings.model_validate(dict(
            steps=tuple(_parse_steps(steps)), trials=trials, objective=objective, space=space, mode=mode,
            solver=solver, n=n, seed=seed, heldout_n=heldout_n, heldout_seed=heldout_seed,
            reference_steps=reference_steps, warm_start=warm_start, dp_grid=dp_grid,
            dp_trajectories=dp_trajectories, batch_size=batch_size, sampler_seed=sampler_seed, study_name=study_name,
        ))
        loaded = load_model(model, allow_pickle=allow_pickle, device=device)
        store = open_storage(storage)
        tuner = Tuner(loaded, settings, store, network_rows=network_rows or None, cache_dir=cache_dir)
        if fail_running:
            for name, numbers in tuner.fail_running().items():
                if numbers:
                    typer.echo(f"{name}: marked running trials {numbers} as failed")
        before = tuner.finished_counts()
    except ValueError as exc:
        raise _flag_error(exc) from None

    where = storage or f"sqlite {DEFAULT_STORAGE}"
    total = settings.trials * len(before)
    typer.echo(f"{loaded.name}: {settings.mode} tuning of {settings.space} schedules for steps {list(settings.steps)}"
               f" ({settings.objective}, {tuner.tuning_seeds.n} samples per trial, solver {settings.solver}); "
               f"storage {where}; {sum(before.values())}/{total} trials already finished")
    finished = dict(before)
    bar = tqdm(total=total, initial=min(sum(finished.values()), total), desc="tuning", unit="trial")

    def on_trial(report: TrialReport) -> None:
        finished[report.study_name] = report.finished
        bar.n = min(sum(finished.values()), total)
        bar.refresh()
        value = f"{report.value:.4g}" if report.value is not None else "-"
        warm = f"  [warm start: {report.warm_start}]" if report.warm_start else ""
        wall = f"{report.wall_s:.2f} s" if report.wall_s is not None else "-"
        tqdm.write(f"steps={report.steps} trial {report.number:>4} {report.state:8s} {settings.objective}={value} "
                   f"({wall}){warm}")

    def on_wait(name: str, running: int) -> None:
        bar.set_postfix_str(f"waiting for {running} trial(s) of other workers in {name}")

    try:
        run = tuner.run(on_trial=on_trial, on_wait=on_wait)
    except KeyboardInterrupt:
        bar.close()
        done = sum(tuner.finished_counts().values())
        typer.echo(f"interrupted: {done}/{total} trials are stored in {where}; the trial in flight is marked failed. "
                   "Re-run the same command to resume.", err=True)
        raise typer.Abort() from None
    except ValueError as exc:
        bar.close()
        raise _flag_error(exc) from None
    except TrialsKeepFailing as exc:
        bar.close()
        raise CliError(str(exc)) from None
    bar.close()

    stopped = [name for name, w in run.workers.items() if w.stopped_early]
    if stopped:
        typer.echo(f"note: {', '.join(stopped)} still has trials running elsewhere; if their workers are dead, "
                   "re-run with --fail-running")
    for b in run.best:
        warm = f", warm start {b.warm_start}" if b.warm_start else ""
        typer.echo(f"best {b.steps:>3} steps: {settings.objective}={b.value:.4g} (trial {b.trial_number}{warm}) "
                   f"{b.timesteps}")
    typer.echo(f"tuning took {run.wall_s:.1f} s")
    if export is None:
        return
    plots_dir = plots or Path("runs") / "tune" / re.sub(r"[^A-Za-z0-9_.-]", "_", tuner.base_name)
    try:
        result = export_best(tuner, export, plots_dir=plots_dir, baselines=baselines,
                             on_progress=lambda msg: typer.echo(f"  scoring {msg}"))
    except ValueError as exc:
        raise _flag_error(exc) from None
    if not result.learned:
        raise CliError("--export: no budget has a complete trial to export")
    typer.echo(f"held-out {settings.objective} (seed {tuner.heldout_seeds.seed}, n={tuner.heldout_seeds.n}):")
    for score in result.learned:
        rivals = [b for b in result.baselines if b.steps == score.steps]
        better = max if tuner.spec.direction == "maximize" else min
        best_builtin = better(rivals, key=lambda b: b.evaluation.value) if rivals else None
        uniform = next((b for b in rivals if b.label == "uniform"), None)
        versus = (f"; uniform {uniform.evaluation.value:.4g}" if uniform is not None else "") + (
            f"; best built-in {best_builtin.label} {best_builtin.evaluation.value:.4g}"
            if best_builtin is not None else "")
        typer.echo(f"  {score.steps:>3} steps: learned {score.evaluation.value:.4g}{versus} "
                   f"-> {result.schedules[score.steps]}")
    typer.echo(f"plots: {result.pareto_png}, {result.timesteps_png}; report: {result.report_json}")
