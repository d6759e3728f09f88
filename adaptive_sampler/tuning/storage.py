"""Where studies live and how workers share them, on Optuna's own pieces (see docs/guides/scaling-out.md).

This module depends on Optuna (and the torch-free `adaptive_sampler.errors`) only, so a worker process loads it
cheaply. A storage (`open_storage`) is a journal file (`runs/tune.journal` by default; several processes on one
machine) or an SQLAlchemy URL (`RDBStorage` with a heartbeat: a killed worker's trial is failed after the grace
period and `RetryHeartbeatStaleTrialCallback` enqueues it again); a bad value raises `StorageError`.

Workers (`run_trials`) started on one storage finish exactly `n_trials` trials together, none twice: each trial
first checks that fewer than `n_trials` trials numbered below it hold a slot and that none evaluates its warm
start; one that loses that race is recorded as FAIL with user attribute `surplus`, not evaluated.

Each trial records its worker (user attribute `worker`). A trial left RUNNING by a dead worker of this machine is
failed and retried the same way as a stale one; this is what frees it on a journal file (no heartbeat) and when the
worker died before its first heartbeat (which Optuna never finds stale). Workers on other machines sharing a
journal file cannot be checked: `fail_running_trials` (`--fail-running`) once no other worker is alive.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from adaptive_sampler._lazy import require_extra
from adaptive_sampler.errors import FieldError, first_line

DEFAULT_STORAGE = Path("runs") / "tune.journal"
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
HEARTBEAT_INTERVAL_S = 10
GRACE_PERIOD_S = 30
MAX_RETRY = 3  # a trial whose worker dies this often (out of memory, say) is left failed

WARM_START = "warm_start"  # user attribute: the warm start a trial evaluates
SURPLUS = "surplus"  # user attribute: the trial lost the race for the last slot and was not evaluated
WORKER = "worker"  # user attribute: the process evaluating the trial (host, boot, pid, start), see `_this_worker`
CONFIG = "config"  # study user attribute: what a resuming run must match
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class TrialsKeepFailing(RuntimeError):
    """Raised by `run_trials` when `max_consecutive_failures` trials in a row failed."""


class SurplusTrial(Exception):
    """Raised inside a trial that would exceed the requested count (or repeat a warm start); it is not evaluated."""


class StorageError(FieldError):
    """A storage value that cannot be used (`value` is the URL); the message is one line."""

    def __init__(self, value: str, rule: str) -> None:
        super().__init__("storage", value, " ".join(rule.splitlines()))


RDB_BACKENDS = ("postgresql", "mysql", "mariadb", "sqlite")


@dataclass(frozen=True)
class StorageTarget:
    """A checked storage value: a journal file, or an SQLAlchemy URL (with the SQLite file, if it is one)."""

    text: str  # what the user gave
    journal: Path | None = None
    url: str | None = None
    sqlite_file: Path | None = None


def unwritable_reason(path: Path, *, folder: bool) -> str | None:
    """Why `path` (a file, or with `folder` a folder) cannot be written or created, or None if it can. Creates
    nothing: an existing file is opened for appending, a folder is probed with an anonymous temporary file."""
    import tempfile

    kind = "folder" if folder else "file"
    try:
        if path.exists():
            if folder != path.is_dir():
                return f"is a {'file' if folder else 'folder'}, not a {kind}"
            if not folder:
                with open(path, "ab"):
                    return None
            with tempfile.TemporaryFile(dir=path):
                return None
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            return f"cannot be created: {parent} is a file, not a folder"
        with tempfile.TemporaryFile(dir=parent):
            return None
    except OSError as exc:
        return f"cannot be written ({exc.strerror or exc})"
    except ValueError as exc:  # a NUL byte in the path
        return f"is not a usable path ({exc})"


def check_storage(url: str | Path | None = None) -> StorageTarget:
    """Check the storage value `url` (None: runs/tune.journal) without opening or creating anything: a known
    scheme, a file path that can be written, no in-memory SQLite (each worker would get its own database).
    Raises StorageError naming `storage`, the value and the rule."""
    text = str(url) if url is not None else str(DEFAULT_STORAGE)
    forms = (f"use a journal file (journal:PATH, or a path ending in {', '.join(JOURNAL_SUFFIXES)}), a SQLite file "
             f"(sqlite:///PATH.db, or a path ending in {', '.join(SQLITE_SUFFIXES)}) or a PostgreSQL / MySQL URL "
             "(postgresql://user@host/db, mysql+pymysql://…)")
    if not text.strip():
        raise StorageError(text, f"is empty; {forms}")
    if "\x00" in text or any(c in text for c in "\n\r"):
        raise StorageError(text, "contains a NUL byte or a line break")
    if text.startswith("journal:"):
        path_text = text.removeprefix("journal:")
        if not path_text.strip():
            raise StorageError(text, "names no journal file; use journal:PATH")
        return StorageTarget(text, journal=_writable(text, Path(path_text)))
    if "://" not in text:
        path = Path(text)
        if path.suffix in JOURNAL_SUFFIXES:
            return StorageTarget(text, journal=_writable(text, path))
        if path.suffix not in SQLITE_SUFFIXES:
            raise StorageError(text, f"is not a storage URL, journal:PATH or a storage file; {forms}")
        return StorageTarget(text, url=f"sqlite:///{path}", sqlite_file=_writable(text, path))
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(text)
        backend = parsed.get_backend_name()
    except (ArgumentError, ValueError, TypeError) as exc:
        raise StorageError(text, f"is not a valid database URL ({exc}); {forms}") from None
    if backend == "postgres":
        raise StorageError(text, "uses the scheme postgres://, which SQLAlchemy does not know; write postgresql://")
    if backend not in RDB_BACKENDS:
        raise StorageError(text, f"has the scheme {parsed.drivername!r}, which is not a storage Optuna can share "
                           f"between workers; {forms}")
    if parsed.get_driver_name() == "psycopg":
        require_extra("psycopg", "postgres", f"the storage {text}")
    if backend != "sqlite":  # a server: reachable or not is found out on opening
        return StorageTarget(text, url=text)
    database = parsed.database or ""
    if (not database or database == ":memory:" or database.startswith("file::memory:")
            or parsed.query.get("mode") == "memory"):
        raise StorageError(text, "is an in-memory SQLite database: every worker (and every re-run) would get its "
                           "own, empty one; use sqlite:///FILE.db or a journal file")
    return StorageTarget(text, url=text, sqlite_file=_writable(text, Path(database)))


def _writable(text: str, path: Path) -> Path:
    reason = unwritable_reason(path, folder=False)
    if reason is not None:
        raise StorageError(text, f"names the file {path}, which {reason}")
    return path


@contextlib.contextmanager
def ignoring_experimental_warnings() -> Iterator[None]:
    """A block in which Optuna's ExperimentalWarning is silenced: the heartbeat and its retry callback, which this
    module builds on, are still marked experimental."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


with ignoring_experimental_warnings():  # stateless: one serves every storage and every retry
    _RETRY = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def open_storage(url: str | Path | None = None, *, heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
                 grace_period: int = GRACE_PERIOD_S) -> BaseStorage:
    """An Optuna storage for `url` (see `check_storage` for the accepted forms), checked first; a file that is
    not a storage (a corrupt database or journal), an unreachable server or a missing database driver raises
    StorageError naming `storage`, not SQLAlchemy's or Optuna's traceback.

    Args:
        url: the storage value (None: runs/tune.journal).
        heartbeat_interval: seconds between a running trial's heartbeats (RDB storages).
        grace_period: seconds without a heartbeat after which a trial is failed and retried.
    """
    target = check_storage(url)
    if target.journal is not None:
        return _journal(target.text, target.journal)
    text = target.url or ""
    sqlite = target.sqlite_file is not None
    if target.sqlite_file is not None:
        target.sqlite_file.parent.mkdir(parents=True, exist_ok=True)
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError

    for attempt in range(5):
        try:
            with ignoring_experimental_warnings():
                storage = RDBStorage(
                    # SQLite: no implicit pysqlite transactions; `_begin_immediate` below opens each one instead
                    text, engine_kwargs={"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite else None,
                    heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                    heartbeat_stale_trial_callback=_RETRY)
            break
        except (ImportError, ValueError) as exc:
            raise StorageError(target.text, f"cannot be opened as an Optuna RDB storage: {first_line(exc)}") from None
        except (SQLAlchemyError, RuntimeError) as exc:
            # Workers opening a new database at once race to create Optuna's tables (SQLite: "UNIQUE constraint
            # failed: alembic_version"; PostgreSQL: 'relation "studies" already exists'): the loser retries.
            lost_race = isinstance(exc, IntegrityError | OperationalError) or (
                isinstance(exc, ProgrammingError) and "already exists" in str(exc))
            if not lost_race:
                raise StorageError(target.text, f"cannot be opened as an Optuna storage ({first_line(exc)})") from None
            if attempt == 4:
                raise StorageError(target.text, f"cannot be opened ({first_line(exc)})") from None
            time.sleep(0.2 * (attempt + 1))
    if sqlite:
        from sqlalchemy import event

        event.listen(storage.engine, "begin", _begin_immediate)
    return storage


def _begin_immediate(connection: Any) -> None:
    """Start every SQLite transaction with BEGIN IMMEDIATE (the SQLAlchemy recipe for serialisable SQLite).

    Optuna reads, then writes, in one transaction (it pops an enqueued trial with `SELECT … FOR UPDATE`, numbers a
    new trial by counting the study's trials); SQLite ignores FOR UPDATE and a deferred transaction reads before it
    locks, so two workers could both pop one trial or race on a new one. Taking the write lock first prevents it.
    """
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _journal(text: str, path: Path) -> JournalStorage:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return JournalStorage(JournalFileBackend(str(path)))
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:  # lines that are not Optuna's log
        raise StorageError(text, f"names the file {path}, which is not an Optuna journal "
                           f"({type(exc).__name__}: {first_line(exc)})") from None
    except OSError as exc:
        raise StorageError(text, f"names the file {path}, which cannot be used ({exc.strerror or exc})") \
            from None


@dataclass(frozen=True)
class WarmStart:
    """Parameters to enqueue as a first trial, under a tag (e.g. `karras`, `dp`, `uniform+logsnr`)."""

    tag: str
    params: dict[str, Any]
    user_attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OpenedStudy:
    """A study, and whether this call created it (False: it was resumed)."""

    study: optuna.Study
    created: bool


def open_study(
    storage: BaseStorage,
    name: str,
    directions: Sequence[Literal["minimize", "maximize"]],
    *,
    config: Mapping[str, Any],
    provenance: Mapping[str, Any] | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    warm_starts: Callable[[], Sequence[WarmStart]] | None = None,
) -> OpenedStudy:
    """Create study `name`, or resume it if it exists with the same `config` and directions.

    The creating call stores `config` (compared on resume) and each `provenance` item as study user attributes.
    Trials of killed workers are failed and retried first (`retry_dead_workers_trials`).
    The warm starts (from `warm_starts`) are enqueued unless a trial with their parameters exists.
    Raises ValueError naming `study_name` if the stored config or directions differ.

    Args:
        storage: an opened storage (`open_storage`).
        name: the study name.
        directions: minimize or maximize, one per objective.
        config: what a resuming run must match.
        provenance: stored once, by the creating call.
        warm_starts: builds the warm starts (called once the study is open).
    """
    study = optuna.create_study(storage=storage, study_name=name, directions=list(directions), sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    stored_directions = [d.name.lower() for d in study.directions]
    if stored_directions != [d.lower() for d in directions]:
        raise FieldError("study_name", name, f"optimises {stored_directions}, this run needs {list(directions)}; "
                         "use another study name")
    stored = study.user_attrs.get(CONFIG)
    if stored is not None:
        _check_config(name, stored, config)
    else:  # this call created the study (or its creator died before storing the config)
        for key, value in (provenance or {}).items():
            study.set_user_attr(key, value)
        study.set_user_attr(CONFIG, dict(config))
    retry_dead_workers_trials(study)  # before the warm starts are checked
    if warm_starts is not None:
        enqueue_warm_starts(study, warm_starts())
    return OpenedStudy(study, created=stored is None)


def check_study(storage: BaseStorage, name: str, config: Mapping[str, Any]) -> None:
    """Raise the error `open_study` would (one line naming each differing setting, stored and now) if study `name`
    exists with another config; create nothing. Lets a run refuse a clash before it does any expensive work."""
    if name not in optuna.study.get_all_study_names(storage):
        return
    stored = optuna.load_study(study_name=name, storage=storage).user_attrs.get(CONFIG)
    if stored is not None:
        _check_config(name, stored, config)


def _check_config(name: str, stored: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    differing = _differences(stored, config)
    if differing:
        shown = "; ".join(f"{key}: stored {_short(old)}, now {_short(new)}" for key, old, new in differing)
        raise FieldError("study_name", name, f"was made with other settings ({shown}); re-run with the same "
                         "settings to resume it, or pass another study name")


def _short(value: Any) -> str:
    """repr of a setting, a SHA-256 cut to 12 hex digits."""
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value):
        return repr(value[:12] + "…")
    return repr(value)


def _differences(stored: Any, config: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """The dotted keys (e.g. `model.conditions.guidance_scale`) whose values differ, with the stored and new value;
    nested dicts are compared key by key, so a message names the setting that changed, not a whole dict."""
    if not (isinstance(stored, Mapping) and isinstance(config, Mapping)):
        return [] if stored == config else [(prefix, stored, config)]
    return [diff for key in sorted({*stored, *config})
            for diff in _differences(stored.get(key), config.get(key), f"{prefix}.{key}" if prefix else key)]


def enqueue_warm_starts(study: optuna.Study, warm_starts: Iterable[WarmStart]) -> list[str]:
    """Enqueue in `study` each of `warm_starts` that has no trial yet (`skip_if_exists`), or whose trials all
    failed; return the tags of the warm starts this call retried (the others Optuna skipped or enqueued silently)."""
    trials = study.get_trials(deepcopy=False)
    tried = {t.user_attrs.get(WARM_START) for t in trials}
    live = {t.user_attrs.get(WARM_START) for t in trials if t.state != TrialState.FAIL}
    retried = []
    for ws in warm_starts:
        lost = ws.tag in tried and ws.tag not in live
        study.enqueue_trial(ws.params, user_attrs={WARM_START: ws.tag, **ws.user_attrs}, skip_if_exists=not lost)
        if lost:
            retried.append(ws.tag)
    return retried


# A waiting trial (a retry, a warm start enqueued late) may be numbered below a running one and still run: every
# worker pops waiting trials before it makes a new one. So it holds its slot as a running trial does.
HOLDING = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)


@dataclass(frozen=True)
class TrialCounts:
    """Trials of a study by state; `--trials` counts `finished` (complete + pruned), not failed or surplus ones."""

    complete: int
    pruned: int
    running: int
    failed: int

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def trial_counts(study: optuna.Study) -> TrialCounts:
    """How many trials of `study` are in each state now (surplus trials left out)."""
    states = [t.state for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(SURPLUS)]
    return TrialCounts(complete=states.count(TrialState.COMPLETE), pruned=states.count(TrialState.PRUNED),
                       running=states.count(TrialState.RUNNING), failed=states.count(TrialState.FAIL))


def fail_running_trials(study: optuna.Study) -> list[int]:
    """Mark every RUNNING trial of `study` FAIL (their warm starts are enqueued again on the next open). Only for
    trials whose worker is dead: a journal file has no heartbeat to tell. Returns the trial numbers."""
    numbers = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    for number in numbers:
        with contextlib.suppress(ValueError, RuntimeError):  # finished meanwhile
            study.tell(number, state=TrialState.FAIL)
    return numbers


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), "" where /proc has none; None: no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
    except OSError:
        pass
    else:
        return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the parenthesised command name
    try:  # no /proc (macOS): the pid alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ""


def _this_worker() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": pid, "start": _start_time(pid) or ""}


def _worker_is_dead(worker: Any) -> bool:
    """True only when `worker` (a `WORKER` attribute) is a process of this machine and this boot that is gone
    (its pid is free, or now belongs to a process started later). Workers of other machines count as alive."""
    if not isinstance(worker, dict) or worker.get("host") != socket.gethostname() or worker.get("boot") != _boot_id():
        return False
    pid = worker.get("pid")
    if not isinstance(pid, int):
        return False
    start = _start_time(pid)
    return start is None or bool(worker.get("start") and start and start != worker.get("start"))


def retry_dead_workers_trials(study: optuna.Study) -> list[int]:
    """Fail, and enqueue again, the trials of `study` whose worker is dead: stale ones (Optuna's heartbeat), and
    RUNNING ones whose worker was a process of this machine that is gone. Returns the numbers of the latter."""
    with ignoring_experimental_warnings():
        optuna.storages.fail_stale_trials(study)  # and retries them (nothing without a heartbeat)
    failed = []
    for trial in study.get_trials(states=(TrialState.RUNNING,)):  # copies: the callback edits its retry_history
        if not _worker_is_dead(trial.user_attrs.pop(WORKER, None)):
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):  # another worker got there first
            continue
        failed.append(trial.number)
        # enqueued without its worker: until the worker that pops it records itself, it is no dead worker's trial
        _RETRY(study, trial)
    return failed


@dataclass(frozen=True)
class WorkerSummary:
    """What one `run_trials` call did: trials it ran (surplus ones included), and the study's finished count."""

    ran: int
    surplus: int
    finished: int
    stopped_early: bool


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float | Sequence[float]],
    n_trials: int,
    *,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    on_wait: Callable[[int], None] | None = None,
    catch: tuple[type[Exception], ...] = (),
    max_consecutive_failures: int = 5,
) -> WorkerSummary:
    """Run `objective` until the study holds `n_trials` finished (complete or pruned) trials, counting every
    worker's; exact with many workers (see the module docstring). With a heartbeat storage, a worker waits while
    the last slots are taken by running trials (they finish, or fail as stale and are retried); without one it
    returns (`stopped_early`). KeyboardInterrupt propagates after Optuna marks the trial in flight FAIL.

    An exception in `catch` marks its trial FAIL (not counted) and the worker goes on, unless that happens
    `max_consecutive_failures` times in a row: then TrialsKeepFailing (the objective is broken, not the schedule).

    Args:
        study: the study (`open_study`).
        n_trials: finished trials the study should hold, counting every worker's.
        callbacks: Optuna callbacks, run after each trial.
        on_wait: called with the running count while the worker waits for the last slots.
        catch: exceptions that fail a trial and let the worker go on.
        max_consecutive_failures: failed trials in a row that stop the worker.
    """
    if n_trials < 0:
        raise FieldError("n_trials", n_trials, "is negative")
    ran: list[int] = []
    surplus: list[int] = []
    failures: list[int] = []

    worker = _this_worker()

    def guarded(trial: optuna.Trial) -> float | Sequence[float]:
        ran.append(trial.number)
        trial.set_user_attr(WORKER, worker)  # lets a later run on this machine retry the trial if this one dies
        ahead = [t for t in study.get_trials(deepcopy=False, states=HOLDING)
                 if t.number < trial.number and not t.user_attrs.get(SURPLUS)]
        tag = trial.user_attrs.get(WARM_START)
        repeat = tag is not None and any(t.user_attrs.get(WARM_START) == tag for t in ahead)
        if len(ahead) >= n_trials or repeat:
            trial.set_user_attr(SURPLUS, True)
            surplus.append(trial.number)
            if not repeat:
                study.stop()  # the other workers hold the last slots
            reason = f"warm start {tag!r} already ran" if repeat else (
                f"{len(ahead)} earlier trials already fill the {n_trials} requested")
            raise SurplusTrial(f"trial {trial.number} not evaluated: {reason}")
        return objective(trial)

    def count_failures(_study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state != TrialState.FAIL or trial.user_attrs.get(SURPLUS):
            failures.clear()
            return
        failures.append(trial.number)
        if len(failures) >= max_consecutive_failures:
            raise TrialsKeepFailing(
                f"{len(failures)} trials in a row failed (the last was trial {trial.number}; Optuna logged why); "
                "stopping this worker: the objective, not the schedule, is likely broken"
            )

    # stop once finished + running trials (of every worker) reach the target; the guard makes it exact
    enough = MaxTrialsCallback(n_trials, states=(*FINISHED, TrialState.RUNNING))
    while True:
        counts = trial_counts(study)
        if counts.finished >= n_trials:
            return WorkerSummary(len(ran), len(surplus), counts.finished, stopped_early=False)
        if counts.finished + counts.running >= n_trials:
            if retry_dead_workers_trials(study):
                continue
            if not _has_heartbeat(study):
                return WorkerSummary(len(ran), len(surplus), counts.finished, stopped_early=True)
            if on_wait is not None:
                on_wait(counts.running)
            time.sleep(1.0)  # then `retry_dead_workers_trials` again, which fails the stale ones
            continue
        study.optimize(guarded, catch=(SurplusTrial, *catch), callbacks=[*callbacks, count_failures, enough])


def _has_heartbeat(study: optuna.Study) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled  # Optuna's own test, which `optimize` uses

    return is_heartbeat_enabled(study._storage)
