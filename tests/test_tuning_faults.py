"""Faults in tuning on a journal file (no heartbeat): a worker killed with SIGKILL mid-trial, then a re-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.exc import ProgrammingError

import adaptive_sampler.tuning.storage as storage_module
from adaptive_sampler.schedules.artifact import ScheduleArtifact
from adaptive_sampler.tuning import WarmStart, open_storage, open_study, run_trials
from adaptive_sampler.tuning.storage import StorageError
from helpers import start_tune_worker


def _quadratic(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", -10.0, 10.0) ** 2


def test_a_warm_start_killed_mid_trial_runs_again_on_the_next_run(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'killed.log'}"
    worker = start_tune_worker(tmp_path, url, "s", 6, n_warm=4, hang_on="w2")
    assert worker.stdout is not None
    line = worker.stdout.readline().split()
    assert line[:1] == ["running"] and line[2] == "w2", (line, worker.communicate(timeout=30))
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    storage = open_storage(url)
    before = {t.number: t.values for t in optuna.load_study(study_name="s", storage=storage).trials
              if t.state == TrialState.COMPLETE}
    assert sorted(before) == [0, 1]

    # the same command again, on the same machine, without --fail-running: the dead worker's trial is failed and
    # retried (the journal records each trial's worker), so the warm start it was evaluating runs
    warm = [WarmStart(tag=f"w{i}", params={"x": float(i)}) for i in range(4)]
    study = open_study(storage, "s", ["minimize"], config={"k": 1}, warm_starts=lambda: warm).study
    summary = run_trials(study, _quadratic, 6)
    trials = sorted(study.trials, key=lambda t: t.number)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert summary.finished == 6 and not summary.stopped_early and len(complete) == 6
    assert {t.number: t.values for t in complete if t.number in before} == before  # no finished trial lost
    tags = sorted(t.user_attrs["warm_start"] for t in complete if "warm_start" in t.user_attrs)
    assert tags == ["w0", "w1", "w2", "w3"]  # each warm start once: w2 was retried, not lost nor repeated
    killed = trials[int(line[1])]
    assert killed.state == TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == {"x": 2.0}
    assert retry.user_attrs["worker"]["pid"] != killed.user_attrs["worker"]["pid"]
    assert run_trials(study, _quadratic, 6).ran == 0


def test_a_trial_of_a_live_worker_is_left_running(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'live.log'}"
    worker = start_tune_worker(tmp_path, url, "s", 3, n_warm=0, hang_on="any")
    try:
        assert worker.stdout is not None and worker.stdout.readline().startswith("running")
        study = open_study(open_storage(url), "s", ["minimize"], config={"k": 1}).study
        summary = run_trials(study, _quadratic, 3)  # the live worker holds the third slot: this one stops
        assert summary.stopped_early and summary.finished == 2
        assert [t.state for t in study.trials].count(TrialState.RUNNING) == 1
    finally:
        worker.kill()
        worker.wait(timeout=30)


def test_a_trial_waiting_below_a_running_one_keeps_its_slot(tmp_path: Path, monkeypatch) -> None:
    # The race CI met on PostgreSQL (25 trials where 24 were asked): worker A reads the waiting list just before a
    # retry is enqueued, so A's new trial is numbered above the waiting retry, and both once took the last slot.
    study = open_study(open_storage(f"journal:{tmp_path / 'race.log'}"), "s", ["minimize"], config={"k": 1}).study
    study.enqueue_trial({"x": 3.0})  # trial 0, waiting: the retry
    pop = optuna.Study._pop_waiting_trial_id
    calls = iter([lambda self: None])  # the first ask misses it, as A did; later asks pop it
    monkeypatch.setattr(optuna.Study, "_pop_waiting_trial_id", lambda self: next(calls, pop)(self))
    summary = run_trials(study, _quadratic, 1)
    retry, first = sorted(study.trials, key=lambda t: t.number)
    assert summary.finished == 1 and summary.surplus == 1
    assert retry.number == 0 and retry.state == TrialState.COMPLETE and retry.params == {"x": 3.0}
    assert first.state == TrialState.FAIL and first.user_attrs["surplus"]


def test_the_tune_command_killed_mid_run_loses_no_trial_and_exports_whole_files(tiny_model_dir: Path,
                                                                               tmp_path: Path) -> None:
    """SIGKILL the real `adaptive-sampler tune` once some trials are stored, run the same command again: the
    trials finished before the kill are kept as they were, the run completes, and the exported files are whole
    (each written atomically: no temporary file is left next to them)."""
    export, storage_url = tmp_path / "catalogue", f"journal:{tmp_path / 'tune.log'}"
    command = [sys.executable, "-m", "adaptive_sampler", "tune", "--model", str(tiny_model_dir), "--steps", "2,3",
               "--trials", "12", "--objective", "fidelity", "--n", "32", "--heldout-n", "8", "--reference-steps",
               "20", "--dp-grid", "10", "--dp-trajectories", "2", "--storage", storage_url, "--cache-dir",
               str(tmp_path / "cache"), "--sampler-seed", "0", "--device", "cpu", "--export", str(export),
               "--plots", str(tmp_path / "plots")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = open_storage(storage_url)

    def finished() -> dict[tuple[str, int], tuple[float, ...]]:
        names = optuna.study.get_all_study_names(storage)
        return {(name, t.number): tuple(t.values) for name in names
                for t in optuna.load_study(study_name=name, storage=storage).trials if t.state == TrialState.COMPLETE}

    deadline = time.monotonic() + 240
    while len(before := finished()) < 3 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, "the run ended before it could be killed mid-run"
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert len(before) >= 3 and not export.exists()

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    after = finished()
    assert {key: after[key] for key in before} == before  # no finished trial lost or changed
    for steps in (2, 3):
        artifact = ScheduleArtifact.load(export / tiny_model_dir.name / f"ddim-{steps}.json")
        assert len(artifact.timesteps) == steps
    assert sorted(p.name for p in (export / tiny_model_dir.name).iterdir()) == ["ddim-2.json", "ddim-3.json"]


def test_a_worker_that_loses_the_race_to_create_the_tables_retries(tmp_path: Path, monkeypatch) -> None:
    # CI on PostgreSQL: three workers opened a new database at once, and one failed with 'relation "studies"
    # already exists' (a ProgrammingError there; SQLite's loser sees an IntegrityError). The loser now retries.
    real, calls = storage_module.RDBStorage, []

    def racing(message: str):
        def open_rdb(*args, **kwargs):
            calls.append(message)
            if len(calls) == 1:
                raise ProgrammingError("CREATE TABLE studies", {}, Exception(message))
            return real(*args, **kwargs)
        return open_rdb

    monkeypatch.setattr(storage_module, "RDBStorage", racing('relation "studies" already exists'))
    storage = open_storage(f"sqlite:///{tmp_path / 'race.db'}")
    assert len(calls) == 2 and storage.get_all_studies() == []
    calls.clear()  # any other ProgrammingError is no race: reported at once, naming the storage
    monkeypatch.setattr(storage_module, "RDBStorage", racing('syntax error at or near "TABEL"'))
    with pytest.raises(StorageError, match=r"cannot be opened as an Optuna storage \(.*syntax error"):
        open_storage(f"sqlite:///{tmp_path / 'other.db'}")
    assert len(calls) == 1
