"""Search methods beyond TPE: CMA-ES from the best warm start, the TPE -> CMA-ES hand-over, and LD3 trials."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from adaptive_sampler.errors import FieldError
from adaptive_sampler.models import load_model
from adaptive_sampler.schedules.artifact import ModelIdentity, ScheduleArtifact
from adaptive_sampler.schedules.catalogue import catalogue_dir
from adaptive_sampler.tuning.export import export_best
from adaptive_sampler.tuning.settings import TuneSettings
from adaptive_sampler.tuning.study import Tuner

FAST = dict(steps=(3,), objective="fidelity", n=4, heldout_n=4, reference_steps=10, dp_grid=8, dp_trajectories=2,
            dp_fine_steps=20, sampler_seed=0)


def _cma_sampled(trial: optuna.trial.FrozenTrial) -> bool:
    return any(key.startswith("cma:") for key in trial.system_attrs)


def _tuner(model_dir: Path, tmp_path: Path, **settings: object) -> Tuner:
    return Tuner(load_model(model_dir), TuneSettings(**{**FAST, **settings}), optuna.storages.InMemoryStorage(),
                 cache_dir=tmp_path)


def test_cmaes_runs_the_warm_starts_then_samples_with_cma_es(tiny_model_dir: Path, tmp_path: Path) -> None:
    tuner = _tuner(tiny_model_dir, tmp_path, method="cmaes", trials=1)
    warm = len(tuner.warm_start_lists(3))
    tuner = _tuner(tiny_model_dir, tmp_path, method="cmaes", trials=warm + 3)
    tuner.run()
    trials = sorted(tuner.open(3).trials, key=lambda t: t.number)
    assert len(trials) == warm + 3
    assert all("warm_start" in t.user_attrs and not _cma_sampled(t) for t in trials[:warm])
    assert all(_cma_sampled(t) for t in trials[warm:])


def test_tpe_then_cmaes_hands_over_at_half_the_trials(tiny_model_dir: Path, tmp_path: Path) -> None:
    tuner = _tuner(tiny_model_dir, tmp_path, method="tpe+cmaes", trials=4, warm_start=False)
    tuner.run()
    trials = sorted(tuner.open(3).trials, key=lambda t: t.number)
    assert [_cma_sampled(t) for t in trials] == [False, False, True, True]


def test_cmaes_and_ld3_refuse_the_pareto_mode(tiny_model_dir: Path, tmp_path: Path) -> None:
    for method in ("cmaes", "ld3"):
        with pytest.raises(FieldError, match=rf"^method: '{method}' needs --mode per-budget"):
            _tuner(tiny_model_dir, tmp_path, method=method, mode="pareto", steps=(2, 3), trials=2)


def test_ld3_trials_learn_fractional_lists_and_export_them(tiny_model_dir: Path, tmp_path: Path) -> None:
    tuner = _tuner(tiny_model_dir, tmp_path, method="ld3", trials=2, ld3_iterations=3, ld3_train_n=4,
                   ld3_batch_size=4)
    assert tuner.base_name.endswith("-fidelity-ld3")
    tuner.run()
    trials = sorted(tuner.open(3).trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 or TrialState.PRUNED in {t.state for t in trials}
    first = trials[0]
    assert first.user_attrs["warm_start"].startswith("ld3 defaults from ")
    assert {"lr", "ball_radius", "teacher_steps", "loss", "init"} == set(first.params)
    assert len(first.user_attrs["timesteps"]) == 3
    assert any(t != int(t) for t in first.user_attrs["timesteps"])
    result = export_best(tuner, tmp_path / "export", baselines=False)
    artifact = ScheduleArtifact.load(result.schedules[3])
    assert artifact.fractional and artifact.timesteps == tuner.best()[0].timesteps


def test_an_ld3_study_resumes_after_an_entry_for_its_model_ships(tiny_model_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("adaptive_sampler.tuning.study.catalogue_dir", lambda: tmp_path / "catalogue")
    storage = optuna.storages.InMemoryStorage()
    model = load_model(tiny_model_dir)
    ld3 = dict(FAST, method="ld3", ld3_iterations=2, ld3_train_n=4, ld3_batch_size=4)
    Tuner(model, TuneSettings(**ld3, trials=1), storage, cache_dir=tmp_path).run()
    ScheduleArtifact(num_train_timesteps=1000, timesteps=[900, 400, 0], method="shipped after the study began",
                     model=ModelIdentity(name=model.name, weights_sha256=model.weights_sha256)
                     ).save(tmp_path / "catalogue" / model.name / "ddim-3.json")
    resumed = Tuner(model, TuneSettings(**ld3, trials=2), storage, cache_dir=tmp_path)
    assert "catalogue" in resumed.warm_start_lists(3)  # a warm start for the other methods...
    resumed.run()  # ...but not a new choice of LD3's start, which Optuna would refuse in a resumed study
    assert len(resumed.open(3).trials) == 2


def test_the_shipped_catalogue_entry_is_a_warm_start_for_its_own_weights_and_solver(tmp_path: Path) -> None:
    entry = ScheduleArtifact.read(catalogue_dir() / "fashion-mnist" / "unipc-10.json")
    embedded = load_model("embedded")
    tuner = Tuner(embedded, TuneSettings(**{**FAST, "solver": "unipc", "steps": (10,)}),
                  optuna.storages.InMemoryStorage(), cache_dir=tmp_path)
    shipped = tuner.shipped_list(10)
    assert shipped is not None and shipped.tolist() == entry.timesteps
    assert any("catalogue" in tag.split("+") for tag in tuner.warm_start_lists(10))
    assert tuner.shipped_list(7) is None  # no unipc-7 entry ships
    retrained = Tuner(replace(embedded, weights_sha256="0" * 64), tuner.settings, optuna.storages.InMemoryStorage(),
                      cache_dir=tmp_path)
    assert retrained.shipped_list(10) is None  # same name and folder, other weights: not its list
