"""Schedule search: search spaces, the DP initialiser, studies that resume and share storage, export, the CLI."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import typer
from diffusers import UNet2DModel
from optuna.trial import TrialState
from pydantic import ValidationError
from typer.testing import CliRunner

from adaptive_sampler import NoiseSchedule, load_entry, load_model, make_policy, validate_timesteps
from adaptive_sampler.cli import app
from adaptive_sampler.errors import FieldError
from adaptive_sampler.policies import STATIC_POLICIES
from adaptive_sampler.schedules.artifact import ScheduleArtifact
from adaptive_sampler.tuning import (
    OBJECTIVES,
    SPACES,
    Objective,
    ScheduleEvaluator,
    Score,
    SeedSet,
    Tuner,
    TuneSettings,
    WarmStart,
    WorkerSummary,
    best_paths,
    fail_running_trials,
    get_objective,
    make_space,
    open_storage,
    open_study,
    register_objective,
    run_trials,
    suggest_timesteps,
)
from adaptive_sampler.tuning.storage import TrialsKeepFailing, _this_worker
from adaptive_sampler.tuning.study import builtin_warm_starts
from helpers import start_tune_worker

optuna.logging.set_verbosity(optuna.logging.WARNING)
LINEAR = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 1x8x8 UNet2DModel in a diffusers folder (weights + scheduler config)."""
    root = tmp_path_factory.mktemp("tiny") / "tiny-unet"
    torch.manual_seed(0)
    UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).save_pretrained(root)
    (root / "scheduler_config.json").write_text(json.dumps({**LINEAR, "clip_sample": True}))
    return root


def cli() -> typer.Typer:
    return app  # the real CLI: `tune` is a subcommand, and bad input leaves it as a CliError naming the flag


# --- search spaces -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("space_name", list(SPACES))
@pytest.mark.parametrize("config", [LINEAR, {**LINEAR, "num_train_timesteps": 50}], ids=["T1000", "T50"])
def test_every_suggestion_is_a_valid_list(space_name: str, config: dict) -> None:
    schedule = NoiseSchedule.from_config(config)
    T = schedule.num_train_timesteps
    space = make_space(space_name)
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 20, T):
        params = space.parameters(n)
        corners = [dict(zip(params, c, strict=True)) for c in itertools.islice(
            itertools.product(*[(p.low, p.high) for p in params.values()]), 16)]
        draws = [{k: float(np.exp(rng.uniform(np.log(p.low), np.log(p.high))) if p.log else rng.uniform(p.low, p.high))
                  for k, p in params.items()} for _ in range(25)]
        for values in corners + draws:
            ts = space.decode(values, n, schedule)
            assert len(ts) == n and (space_name == "free" or int(ts[0]) == T - 1)  # families start at T-1
            validate_timesteps(ts, T)  # raises on any broken rule


def test_optuna_suggestions_decode_to_valid_lists() -> None:
    schedule = NoiseSchedule.from_config(LINEAR)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for space_name in SPACES:
        for _ in range(10):
            trial = study.ask()
            ts = suggest_timesteps(trial, make_space(space_name), 6, schedule, prefix=f"{space_name}.")
            validate_timesteps(ts, 1000)
            study.tell(trial, 0.0)


def test_free_space_encodes_every_list_exactly() -> None:
    schedule = NoiseSchedule.from_config(LINEAR)
    space = make_space("free")
    rng = np.random.default_rng(1)
    lists = [make_policy(name).timesteps(n, schedule) for n in (1, 2, 5, 10, 25) for name in STATIC_POLICIES]
    lists += [ts for n in (2, 5, 10) for ts in builtin_warm_starts(n, schedule).values()]
    lists += [torch.tensor(sorted(rng.choice(1000, size=k, replace=False).tolist(), reverse=True))
              for k in (1, 3, 9, 40) for _ in range(10)]
    lists += [torch.arange(999, -1, -1)]
    for ts in lists:
        assert space.decode(space.encode(ts, schedule), len(ts), schedule).tolist() == ts.tolist()


def test_families_contain_their_built_in_policy() -> None:
    schedule = NoiseSchedule.from_config(LINEAR)
    for space, params, policy in [("power", {"power": 1.0, "t_min": 0.0}, "uniform"),
                                  ("karras", {"rho": 7.0, "t_min": 0.0}, "karras"),
                                  ("logsnr", {"warp": 1.0, "t_min": 0.0}, "logsnr")]:
        expected = make_policy(policy).timesteps(10, schedule)
        assert make_space(space).decode(params, 10, schedule).tolist() == expected.tolist()
        assert make_space(space).encode(expected, schedule) == params  # warm starts land on the exact member


def test_unknown_space_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"^space: 'spline' is not one of free, power, karras, logsnr"):
        make_space("spline")


# --- objectives -----------------------------------------------------------------------------------------------------
def test_unknown_objective_names_the_field_and_the_registered_ones() -> None:
    with pytest.raises(FieldError, match=r"^objective: 'lpips' is not one of fid, kid, fidelity") as located:
        get_objective("lpips")
    assert (located.value.field, located.value.value) == ("objective", "lpips")
    with pytest.raises(ValidationError) as info:
        TuneSettings(objective="lpips")
    (error,) = info.value.errors()
    assert error["loc"] == ("objective",) and error["input"] == "lpips"
    assert "fid, kid, fidelity" in error["msg"]


class _MeanObjective(Objective):
    """A plug-in: the running mean of the samples (in [-1, 1])."""

    def evaluate(self, chunks, evaluator):  # type: ignore[no-untyped-def]
        total = count = 0.0
        for _chunk, samples in chunks:
            total, count = total + float(samples.sum()), count + samples.numel()
            yield Score(total / count, {"mean": total / count})


def test_a_registered_objective_plugs_into_the_evaluator_and_the_settings(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = _MeanObjective("mean", "maximize", "mean pixel")
    monkeypatch.setitem(OBJECTIVES, "mean", plugin)  # removed again after the test
    assert register_objective(plugin) is plugin and get_objective("mean") is plugin
    assert TuneSettings(objective="mean").tuning_n == 64  # the plug-in's defaults
    seeds = get_objective("mean").tuning_seeds(8, 0)
    assert seeds.chunks == (2, 2, 2, 2)
    model = load_model(tiny_model_dir)
    ts = make_policy("uniform").timesteps(3, model.adapter().schedule)
    rungs: list[tuple[int, float]] = []
    result = ScheduleEvaluator(model, "mean", seeds, cache_dir=None).evaluate(ts, lambda n, v: rungs.append((n, v)))
    from adaptive_sampler import sample

    samples = torch.cat([sample(model.adapter(network_rows=8), ts, model.sample_shape, 2, seed=j).samples
                         for j in range(4)])
    assert result.value == pytest.approx(float(samples.mean()), rel=1e-5)
    assert [n for n, _ in rungs] == [2, 4, 6] and result.metrics == {"mean": result.value}


def test_builtin_objectives_keep_their_seed_sets() -> None:
    assert get_objective("fid").tuning_seeds(512, 0) == SeedSet(0, (256, 256))
    assert get_objective("fid").tuning_seeds(200, 3) == SeedSet(3, (200,))
    assert get_objective("kid").tuning_seeds(256, 0) == SeedSet(0, (64, 64, 64, 64))
    assert get_objective("fidelity").tuning_seeds(5, 0) == SeedSet(0, (3, 2))
    with pytest.raises(ValueError, match=r"^n: 100 tuning samples is below the 129 that fid needs"):
        get_objective("fid").tuning_seeds(100, 0)


# --- DP initialiser ------------------------------------------------------------------------------------------------
def test_dp_finds_the_known_optimum_for_every_step_count() -> None:
    # cost[i][j] = (j - i)² + 0.1·i: convex in the jump length, so the optimum spreads the jumps evenly, and the
    # 0.1·i term breaks ties toward small jumps first. By hand: n=1 0→4 = 16; n=2 0→2→4 = 4 + 4.2 = 8.2 (0→1→4 is
    # 10.1, 0→3→4 is 10.3); n=3 0→1→2→4 = 1 + 1.1 + 4.2 = 6.3 (0→1→3→4 is 6.4, 0→2→3→4 is 6.5); n=4 all = 4.6.
    inf = np.inf
    cost = np.array([
        [inf, 1.0, 4.0, 9.0, 16.0],
        [inf, inf, 1.1, 4.1, 9.1],
        [inf, inf, inf, 1.2, 4.2],
        [inf, inf, inf, inf, 1.3],
        [inf, inf, inf, inf, inf],
    ])
    paths = best_paths(cost)
    assert {n: p.nodes for n, p in paths.items()} == {1: (0, 4), 2: (0, 2, 4), 3: (0, 1, 2, 4), 4: (0, 1, 2, 3, 4)}
    assert [paths[n].cost for n in (1, 2, 3, 4)] == pytest.approx([16.0, 8.2, 6.3, 4.6])
    assert set(best_paths(cost, max_steps=2)) == {1, 2}


def test_dp_agrees_with_brute_force_on_a_random_matrix() -> None:
    rng = np.random.default_rng(3)
    m = 8
    cost = rng.uniform(0.1, 5.0, size=(m, m))
    paths = best_paths(cost, max_steps=5)
    for n in range(1, 6):
        brute = min((sum(cost[a, b] for a, b in zip((0, *mid), (*mid, m - 1), strict=True)), (0, *mid, m - 1))
                    for mid in itertools.combinations(range(1, m - 1), n - 1))
        assert paths[n].cost == pytest.approx(brute[0]) and paths[n].nodes == brute[1]


def test_dp_rejects_a_bad_matrix_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"^cost: shape \(2, 3\)"):
        best_paths(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"^cost: contains NaN"):
        best_paths(np.full((3, 3), np.nan))


# --- studies: warm starts, resume, workers -------------------------------------------------------------------------
WARM = [WarmStart(tag=f"w{i}", params={"x": float(i)}) for i in range(4)]


def _quadratic(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", -10.0, 10.0) ** 2


def test_warm_start_trials_come_first(tmp_path: Path) -> None:
    storage = open_storage(tmp_path / "warm.db")
    study = open_study(storage, "s", ["minimize"], config={"k": 1}, warm_starts=lambda: WARM).study
    run_trials(study, _quadratic, 7)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.user_attrs.get("warm_start") for t in trials] == ["w0", "w1", "w2", "w3", None, None, None]
    assert [t.params["x"] for t in trials[:4]] == [0.0, 1.0, 2.0, 3.0]
    # opening again enqueues nothing new: every warm start already has its trial
    again = open_study(storage, "s", ["minimize"], config={"k": 1}, warm_starts=lambda: WARM)
    assert not again.created and len(again.study.trials) == 7


@pytest.mark.parametrize("url", ["{tmp}/once.db", "journal:{tmp}/once.log"], ids=["sqlite", "journal"])
def test_warm_starts_are_enqueued_once_however_often_the_study_is_opened(tmp_path: Path, url: str) -> None:
    storage = open_storage(url.format(tmp=tmp_path))
    for _ in range(3):  # three resumes before any trial ran: skip_if_exists keeps one trial per warm start
        open_study(storage, "s", ["minimize"], config={}, warm_starts=lambda: WARM)
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.user_attrs["warm_start"] for t in study.trials] == ["w0", "w1", "w2", "w3"]
    assert all(t.state == TrialState.WAITING for t in study.trials)
    run_trials(study, _quadratic, 2)
    more = [*WARM, WarmStart(tag="w4", params={"x": 4.0})]
    open_study(storage, "s", ["minimize"], config={}, warm_starts=lambda: more)  # a new warm start goes in, once
    open_study(storage, "s", ["minimize"], config={}, warm_starts=lambda: more)
    assert [t.user_attrs.get("warm_start") for t in study.trials] == ["w0", "w1", "w2", "w3", "w4"]
    run_trials(study, _quadratic, 6)
    tags = [t.user_attrs.get("warm_start") for t in study.trials if t.state == TrialState.COMPLETE]
    assert tags == ["w0", "w1", "w2", "w3", "w4", None]


def test_resume_after_an_interrupt_keeps_finished_trials_and_reruns_the_lost_warm_start(tmp_path: Path) -> None:
    storage = open_storage(f"journal:{tmp_path / 'resume.log'}")
    study = open_study(storage, "s", ["minimize"], config={}, warm_starts=lambda: WARM).study
    calls = []

    def interrupted(trial: optuna.Trial) -> float:
        calls.append(trial.number)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C during trial 2 (warm start w2)
        return _quadratic(trial)

    with pytest.raises(KeyboardInterrupt):
        run_trials(study, interrupted, 8)
    before = {t.number: t.values for t in study.trials if t.state == TrialState.COMPLETE}
    assert sorted(before) == [0, 1] and study.trials[2].state == TrialState.FAIL

    resumed = open_study(storage, "s", ["minimize"], config={}, warm_starts=lambda: WARM).study
    summary = run_trials(resumed, _quadratic, 8)
    complete = [t for t in resumed.trials if t.state == TrialState.COMPLETE]
    assert summary.finished == 8 and len(complete) == 8
    assert {t.number: t.values for t in complete if t.number in before} == before
    tags = [t.user_attrs.get("warm_start") for t in complete]
    assert sorted(tag for tag in tags if tag) == ["w0", "w1", "w2", "w3"]  # w2 re-enqueued, each ran once
    assert run_trials(resumed, _quadratic, 8).ran == 0  # a finished study runs nothing more


def test_a_killed_workers_trial_is_released_by_fail_running(tmp_path: Path) -> None:
    storage = open_storage(tmp_path / "killed.jsonl")  # journal: no heartbeat
    study = open_study(storage, "s", ["minimize"], config={}).study
    run_trials(study, _quadratic, 2)
    study.ask()  # a worker took a trial and died
    summary = run_trials(study, _quadratic, 3)
    assert summary.stopped_early and summary.finished == 2
    assert fail_running_trials(study) == [2]
    assert run_trials(study, _quadratic, 3).finished == 3


def test_failed_trials_do_not_count_until_they_keep_failing(tmp_path: Path) -> None:
    study = open_study(open_storage(tmp_path / "flaky.jsonl"), "s", ["minimize"], config={}).study
    fails = iter([True, False, True, False, False, False])

    def flaky(trial: optuna.Trial) -> float:
        value = _quadratic(trial)
        if next(fails):
            raise FloatingPointError("samples are NaN")
        return value

    assert run_trials(study, flaky, 4, catch=(FloatingPointError,)).finished == 4
    assert [t.state for t in study.trials].count(TrialState.FAIL) == 2

    def broken(trial: optuna.Trial) -> float:
        raise FloatingPointError("samples are NaN")

    with pytest.raises(TrialsKeepFailing, match=r"^3 trials in a row failed"):
        run_trials(study, broken, 6, catch=(FloatingPointError,), max_consecutive_failures=3)


def test_changed_settings_do_not_resume_a_study(tmp_path: Path) -> None:
    storage = open_storage(tmp_path / "cfg.db")
    open_study(storage, "s", ["minimize"], config={"objective": "fid"})
    with pytest.raises(ValueError, match=r"^study_name: 's' was made with other settings \(objective: stored"):
        open_study(storage, "s", ["minimize"], config={"objective": "kid"})


def test_a_study_clash_is_one_line_naming_the_nested_setting_that_changed(tmp_path: Path) -> None:
    storage = open_storage(tmp_path / "cfg.db")
    model = {"name": "sd", "weights_sha256": "ab" * 32, "conditions": {"prompts": 4, "guidance_scale": 3.0}}
    open_study(storage, "s", ["minimize"], config={"objective": "fid", "model": model})
    changed = {**model, "conditions": {"prompts": 4, "guidance_scale": 7.5}}
    with pytest.raises(ValueError) as caught:
        open_study(storage, "s", ["minimize"], config={"objective": "fid", "model": changed})
    assert "\n" not in str(caught.value)
    assert str(caught.value) == ("study_name: 's' was made with other settings (model.conditions.guidance_scale: "
                                 "stored 3.0, now 7.5); re-run with the same settings to resume it, or pass another "
                                 "study name")


@pytest.mark.parametrize("url", ["sqlite:///{tmp}/shared.db", "journal:{tmp}/shared.log"], ids=["sqlite", "journal"])
def test_two_worker_processes_finish_the_requested_trials_exactly(tmp_path: Path, url: str) -> None:
    url = url.format(tmp=tmp_path)
    workers = [start_tune_worker(tmp_path, url, "shared", 16) for _ in range(2)]
    outputs = [w.communicate(timeout=120) for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    assert all("WorkerSummary(ran=" in out for out, _ in outputs)
    study = optuna.load_study(study_name="shared", storage=open_storage(url))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 16
    assert len({t.number for t in complete}) == 16
    # each enqueued warm start ran exactly once (on SQLite this needs BEGIN IMMEDIATE: see storage._begin_immediate)
    warm = sorted(t.user_attrs["warm_start"] for t in complete if "warm_start" in t.user_attrs)
    assert warm == [f"w{i}" for i in range(8)]
    assert all(t.state == TrialState.FAIL and t.user_attrs.get("surplus") for t in study.trials if t not in complete)


def test_a_killed_workers_trial_is_retried_after_its_heartbeat_stops(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/hb.db"
    worker = start_tune_worker(tmp_path, url, "hb", 3, n_warm=1, hang_on="w0")
    assert worker.stdout is not None and worker.stdout.readline().strip() == "running 0 w0"
    worker.kill()
    worker.wait(timeout=30)
    storage = open_storage(url, heartbeat_interval=1, grace_period=2)
    study = optuna.load_study(study_name="hb", storage=storage)
    (killed,) = study.trials
    assert killed.state == TrialState.RUNNING
    # as if the worker ran on another machine, where its death cannot be seen: only the heartbeat frees the trial
    storage.set_trial_user_attr(killed._trial_id, "worker", {**killed.user_attrs["worker"], "host": "elsewhere"})
    summary = run_trials(study, _quadratic, 3)  # waits out the grace period, then runs the retry among its 3
    trials = sorted(study.trials, key=lambda t: t.number)
    assert summary.finished == 3 and trials[0].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert retry.user_attrs["warm_start"] == "w0"  # the retry evaluates what the killed trial did
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_retried(tmp_path: Path) -> None:
    # Optuna never finds a trial stale that has no heartbeat; CI once waited 90 minutes on one
    storage = open_storage(tmp_path / "early.db", heartbeat_interval=1, grace_period=2)
    study = open_study(storage, "s", ["minimize"], config={}).study
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trial = study.ask()  # RUNNING with no heartbeat: Optuna's heartbeat thread runs only inside `optimize`
    trial.suggest_float("x", -10.0, 10.0)
    trial.set_user_attr("worker", {**_this_worker(), "pid": int(gone.stdout), "start": "gone"})
    summaries: list[WorkerSummary] = []
    thread = threading.Thread(target=lambda: summaries.append(run_trials(study, _quadratic, 3)), daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "run_trials still waits on the dead worker's trial"
    trials = sorted(study.trials, key=lambda t: t.number)
    assert summaries[0].finished == 3 and trials[0].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == trial.number]
    assert retry.state == TrialState.COMPLETE and retry.params == trials[0].params


# --- end to end on a tiny model --------------------------------------------------------------------------------------
def tune_args(model_dir: Path, tmp: Path, *extra: str) -> list[str]:
    return ["tune", "--model", str(model_dir), "--steps", "2,3", "--trials", "6", "--objective", "fidelity",
            "--n", "8", "--heldout-n", "8", "--reference-steps", "20", "--dp-grid", "10", "--dp-trajectories", "2",
            "--storage", f"sqlite:///{tmp}/tune.db", "--cache-dir", str(tmp / "cache"), "--sampler-seed", "0",
            "--device", "cpu", *extra]


def test_tiny_end_to_end_tune_exports_and_resumes(tiny_model_dir: Path, tmp_path: Path) -> None:
    export = tmp_path / "catalogue"
    args = tune_args(tiny_model_dir, tmp_path, "--export", str(export), "--plots", str(tmp_path / "plots"))
    first = CliRunner().invoke(cli(), args)
    assert first.exit_code == 0, first.output
    assert "0/12 trials already finished" in first.output and first.output.count(" trial ") >= 12

    storage = open_storage(f"sqlite:///{tmp_path}/tune.db")
    model = load_model(tiny_model_dir)
    schedule = model.adapter().schedule
    for steps in (2, 3):
        study = optuna.load_study(study_name=f"tiny-unet-ddim-fidelity-free:steps={steps}", storage=storage)
        trials = sorted(study.trials, key=lambda t: t.number)
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 6
        complete, pruned = (sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED))
        assert (f"steps={steps}: 6/6 trials finished (--trials counts complete + pruned): {complete} complete, "
                f"{pruned} pruned;") in first.output
        warm = [t for t in trials if "warm_start" in t.user_attrs]
        assert warm == trials[: len(warm)] and len(warm) >= 3  # warm starts first, the DP initialiser leading
        assert "dp" in warm[0].user_attrs["warm_start"].split("+")
        builtin = builtin_warm_starts(steps, schedule)
        for t in (t for t in warm if t.state in (TrialState.COMPLETE, TrialState.PRUNED)):  # 6 trials < warm starts
            for tag in t.user_attrs["warm_start"].split("+"):
                if tag in builtin:  # the free space encodes every list exactly: warm starts are the policies
                    assert t.user_attrs["timesteps"] == builtin[tag].tolist()

        # export/import round trip: the file is the best trial's list with held-out scores attached
        path = export / "tiny-unet" / f"ddim-{steps}.json"
        artifact = ScheduleArtifact.load(path)
        best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (t.value, -t.number))
        assert artifact.timesteps == best.user_attrs["timesteps"]
        assert {"heldout_psnr", "heldout_n", "tuning_fidelity"} <= set(artifact.metrics)
        assert artifact.model.weights_sha256 == model.weights_sha256
        assert make_policy(f"file:{path}").timesteps(None, schedule).tolist() == artifact.timesteps
        assert load_entry(f"tiny-unet/ddim-{steps}", root=export).timesteps == artifact.timesteps
    assert (tmp_path / "plots" / "pareto.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "timesteps.png").stat().st_size > 1000
    report = json.loads((tmp_path / "plots" / "report.json").read_text())
    assert {b["label"] for b in report["baselines"]} >= {"uniform", "karras", "logsnr", "quadratic"}

    counts = {s.study_name: len(s.trials) for s in
              (optuna.load_study(study_name=n, storage=storage) for n in optuna.get_all_study_names(storage))}
    second = CliRunner().invoke(cli(), tune_args(tiny_model_dir, tmp_path))
    assert second.exit_code == 0, second.output
    assert "12/12 trials already finished" in second.output and " trial " not in second.output
    assert {s.study_name: len(s.trials) for s in (optuna.load_study(study_name=n, storage=storage)
                                                  for n in optuna.get_all_study_names(storage))} == counts


def test_pareto_study_has_two_objectives_and_no_pruning(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = TuneSettings(steps=(2, 3), trials=4, objective="fidelity", mode="pareto", n=4, reference_steps=10,
                            warm_start=False, sampler_seed=0)
    tuner = Tuner(load_model(tiny_model_dir), settings, optuna.storages.InMemoryStorage(), cache_dir=tmp_path)
    run = tuner.run()
    study = tuner.open(None)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert len(study.trials) == 4 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert all(t.values[1] == t.params["steps"] == len(t.user_attrs["timesteps"]) for t in study.trials)
    assert all(not t.intermediate_values for t in study.trials)
    assert {b.steps for b in run.best} <= {2, 3}
    assert study.user_attrs["settings"] == settings.model_dump(mode="json")  # the settings are the provenance


def test_every_setting_is_a_tune_flag_with_its_default_and_help() -> None:
    from adaptive_sampler.tuning import TuneOptions

    command = typer.main.get_command(cli()).commands["tune"]  # type: ignore[attr-defined]
    params = {p.name: p for p in command.params}
    assert set(params) == set(TuneOptions.model_fields)
    for name, info in TuneOptions.model_fields.items():
        assert "--" + name.replace("_", "-") in params[name].opts
        assert params[name].help == info.description
        expected = ",".join(map(str, info.default)) if isinstance(info.default, tuple) else info.default
        assert params[name].default == expected, name
    assert params["warm_start"].secondary_opts == ["--no-warm-start"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--steps", "4,x"], "--steps: '4,x' is not a comma-separated list of integers"),
    (["--steps", "0,3"], "--steps: "),
    (["--objective", "fid"], "--objective: 'fid' scores samples in the embedded Fashion-MNIST feature space"),
    (["--objective", "lpips"], "--objective: 'lpips'"),
    (["--heldout-seed", "2"], "--heldout-seed: 2 falls among the tuning seeds 0…3"),
    (["--solver", "euler"], "--solver: 'euler'"),
    (["--storage", "runs/x.txt"], "--storage: 'runs/x.txt' is not a storage URL"),
])
def test_cli_errors_name_the_flag(tiny_model_dir: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    from adaptive_sampler.cli import CliError

    result = CliRunner().invoke(cli(), tune_args(tiny_model_dir, tmp_path) + extra)
    assert isinstance(result.exception, CliError), result.output
    assert str(result.exception).startswith(message), str(result.exception)
