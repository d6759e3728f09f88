"""Faults in tuning on a journal file (no heartbeat): a worker killed with SIGKILL mid-trial, then a re-run."""

from __future__ import annotations

import signal
from pathlib import Path

import optuna
from optuna.trial import TrialState

from adaptive_sampler.tuning import WarmStart, open_storage, open_study, run_trials
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
