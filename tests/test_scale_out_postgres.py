"""Tuning across machines: three workers on one real PostgreSQL server, one killed with SIGKILL mid-trial.

The server is a throwaway cluster that `.ci/postgres.sh start` creates (initdb + pg_ctl, as an unprivileged user);
its SQLAlchemy URL comes in `ADAPTIVE_SAMPLER_TEST_POSTGRES`, e.g.
`ADAPTIVE_SAMPLER_TEST_POSTGRES=$(.ci/postgres.sh start) pytest tests/test_scale_out_postgres.py`. Without it the
test is skipped, except in CI (`ADAPTIVE_SAMPLER_CI` set, as `.ci/run` does), where a missing server is a failure.
"""

from __future__ import annotations

import collections
import os
import signal
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from adaptive_sampler.tuning import open_storage
from helpers import start_tune_worker

URL_VAR = "ADAPTIVE_SAMPLER_TEST_POSTGRES"


@pytest.fixture(scope="module")
def postgres_url() -> str:
    url = os.environ.get(URL_VAR)
    missing = None
    if not url:
        missing = f"{URL_VAR} is not set (export {URL_VAR}=$(.ci/postgres.sh start))"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            missing = "the PostgreSQL driver is not installed: pip install -e '.[postgres]'"
    if missing is not None:
        if os.environ.get("ADAPTIVE_SAMPLER_CI"):
            pytest.fail(f"CI runs the PostgreSQL scale-out test, but {missing}")
        pytest.skip(missing)
    assert url is not None
    return url


def test_three_workers_on_postgres_finish_exactly_the_requested_trials_with_one_killed(
        postgres_url: str, tmp_path: Path) -> None:
    name, n_trials, n_warm = f"scale-out-{uuid.uuid4().hex[:8]}", 24, 8
    victim = start_tune_worker(tmp_path, postgres_url, name, n_trials, n_warm=n_warm, hang_on="any")
    others = [start_tune_worker(tmp_path, postgres_url, name, n_trials, n_warm=n_warm) for _ in range(2)]
    try:
        assert victim.stdout is not None
        line = victim.stdout.readline().split()
        assert line[:1] == ["running"], (line, victim.communicate(timeout=30))
        killed_number = int(line[1])
        victim.send_signal(signal.SIGKILL)  # mid-trial: its trial stays RUNNING until its heartbeat goes stale
        victim.wait(timeout=30)
        outputs = [w.communicate(timeout=120) for w in others]
    finally:
        for w in (victim, *others):
            if w.poll() is None:
                w.kill()
    assert victim.returncode == -signal.SIGKILL
    assert all(w.returncode == 0 for w in others), outputs
    assert all("WorkerSummary(ran=" in out for out, _ in outputs), outputs

    study = optuna.load_study(study_name=name, storage=open_storage(postgres_url))
    trials = sorted(study.trials, key=lambda t: t.number)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n_trials  # none lost
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING, TrialState.PRUNED)]
    # none duplicated: every warm start ran exactly once, and no parameter set ran twice
    warm = collections.Counter(t.user_attrs.get("warm_start") for t in complete)
    assert {tag: warm[tag] for tag in warm if tag is not None} == {f"w{i}": 1 for i in range(n_warm)}
    assert len({t.params["x"] for t in complete}) == n_trials
    # the killed trial failed by heartbeat and was retried (same parameters and user attributes)
    killed = trials[killed_number]
    assert killed.state == TrialState.FAIL and not killed.user_attrs.get("surplus")
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed_number]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert retry.user_attrs.get("warm_start") == killed.user_attrs.get("warm_start")
    # the only other non-complete trials are surplus ones: they lost the race for the last slots, unevaluated
    assert all(t.user_attrs.get("surplus") for t in trials if t.state == TrialState.FAIL and t is not killed)
