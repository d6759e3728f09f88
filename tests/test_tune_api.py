"""`tune()` from Python: the studies and the best schedule artifact per budget come back, resumable, exportable."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from adaptive_sampler import ScheduleArtifact, TuneOptions, TuneResult, tune


def tiny_options(model_dir: Path, tmp: Path, **fields: object) -> TuneOptions:
    """A tune of seconds: 2 budgets, 3 trials each (warm starts only), fidelity on 4 samples."""
    return TuneOptions.model_validate({
        "model": str(model_dir), "steps": (2, 3), "trials": 3, "objective": "fidelity", "n": 4, "heldout_n": 4,
        "reference_steps": 10, "dp_grid": 8, "dp_trajectories": 2, "storage": f"{tmp}/tune.journal",
        "cache_dir": tmp / "cache", "sampler_seed": 0, "device": "cpu", **fields})


def test_tune_returns_the_studies_and_a_best_artifact_per_budget(tiny_model_dir: Path, tmp_path: Path) -> None:
    verbosity = optuna.logging.get_verbosity()
    result = tune(tiny_options(tiny_model_dir, tmp_path))
    assert isinstance(result, TuneResult)
    assert optuna.logging.get_verbosity() == verbosity  # Optuna's logging is the caller's
    assert sorted(result.studies) == [2, 3] and result.export is None
    for steps, study in result.studies.items():
        assert study.study_name.endswith(f":steps={steps}")
        finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(finished) == 3
        best = max((t for t in finished if t.state == TrialState.COMPLETE), key=lambda t: (t.value, -t.number))
        artifact = result.artifacts[steps]
        assert artifact.timesteps == best.user_attrs["timesteps"] and len(artifact.timesteps) == steps
        assert artifact.metrics["tuning_fidelity"] == best.value and "heldout_psnr" not in artifact.metrics
        artifact.save(tmp_path / f"ddim-{steps}.json")
        assert ScheduleArtifact.load(tmp_path / f"ddim-{steps}.json") == artifact
    frame = result.studies[2].trials_dataframe()  # pandas, from the analysis extra
    assert len(frame) == len(result.studies[2].trials) and "value" in frame.columns
    figure = optuna.visualization.plot_optimization_history(result.studies[2])  # plotly, from the analysis extra
    assert len(figure.data[0].y) == 3  # the complete trials

    # keyword arguments override the options; the stored trials are resumed, and export adds held-out scores
    exported = tune(tiny_options(tiny_model_dir, tmp_path), export=tmp_path / "catalogue", plots=tmp_path / "plots",
                    baselines=False)
    assert exported.export is not None and exported.run.workers[result.studies[2].study_name].ran == 0
    for steps, artifact in exported.artifacts.items():
        assert artifact.timesteps == result.artifacts[steps].timesteps
        assert {"heldout_psnr", "heldout_n"} <= set(artifact.metrics)
        assert ScheduleArtifact.load(exported.export.schedules[steps]) == artifact


def test_tune_validates_keyword_arguments_into_the_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="trials"):
        tune(trials=-1, storage=f"{tmp_path}/tune.journal")
