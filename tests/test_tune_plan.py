"""A small tune is small and says so: the plan line, the time-left estimate, `--quick`, the held-out summary line,
warm starts without the catalogue, and `--trials 0 --export` refused before any work."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from adaptive_sampler.cli.tune import heldout_line, plan_line, time_left
from adaptive_sampler.models import load_model
from adaptive_sampler.tuning import TuneOptions, Tuner, TuneSettings
from adaptive_sampler.tuning.evaluator import Evaluation
from adaptive_sampler.tuning.export import HeldoutScore
from adaptive_sampler.tuning.runner import TunePlan, plan
from adaptive_sampler.tuning.storage import open_storage
from helpers import run_cli


def run_tune(model_dir: Path, tmp: Path, *extra: str) -> tuple[int, str]:
    run = run_cli("tune", "--model", model_dir, "--steps", "2", "--objective", "fidelity", "--n", "4",
            "--reference-steps", "10", "--dp-grid", "8", "--dp-trajectories", "2", "--storage",
            f"sqlite:///{tmp}/tune.db", "--cache-dir", str(tmp / "cache"), "--sampler-seed", "0", "--device", "cpu",
            *extra)
    return run.code, run.out + run.err


def test_the_plan_says_how_many_trials_search_and_what_the_export_scores(tiny_model_dir: Path,
                                                                         tmp_path: Path) -> None:
    options = TuneOptions(model=str(tiny_model_dir), steps=(2, 3), trials=12, objective="fidelity", n=4,
                          heldout_n=8, reference_steps=10, dp_grid=8, dp_trajectories=2, export=tmp_path / "e",
                          storage=f"{tmp_path}/t.journal", cache_dir=tmp_path / "c", device="cpu")
    tuner = Tuner(load_model(tiny_model_dir), options.settings(), open_storage(options.storage),
                  cache_dir=options.cache_dir)
    the_plan = plan(tuner, options)
    warm = max(len(tuner.warm_starts([n], pareto=False)) for n in (2, 3))
    assert (the_plan.warm_starts, the_plan.search_trials, the_plan.tuning_n) == (warm, 12 - warm, 4)
    assert the_plan.heldout_lists == 1 + 8  # the learned list, 7 built-in policies and AYS
    assert the_plan.heldout_sample_steps() == 8 * (9 * (2 + 3) + 10)  # lists x steps, and the reference
    assert plan_line(the_plan, "cmaes") == (
        f"plan per study: {warm} warm starts, then {12 - warm} CMA-ES trials; 4 tuning samples per trial; then the "
        "best list and 8 built-ins per budget on 8 held-out samples (reference: 10 steps)")
    no_export = plan(tuner, options.model_copy(update={"export": None}))
    assert no_export.heldout_n is None and no_export.heldout_sample_steps() == 0


def test_trials_within_the_warm_starts_are_said_to_run_no_search(tiny_model_dir: Path, tmp_path: Path) -> None:
    code, output = run_tune(tiny_model_dir, tmp_path, "--trials", "2")
    assert code == 0, output
    line = next(line for line in output.splitlines() if line.startswith("plan"))
    assert line.startswith("plan: only warm starts run: --trials 2 <= ") and "so no search trial" in line


def test_the_time_left_counts_the_remaining_trials_and_the_heldout_scoring() -> None:
    the_plan = TunePlan(trials=10, warm_starts=4, tuning_n=8, heldout_n=16, heldout_lists=2, reference_steps=None,
                        steps=(4,))
    assert time_left(the_plan, [(3.0, None)], 9) is None  # no complete trial yet: no rate per sample and step
    # 2 trials of 6 s on average, 8 left: 48 s; held-out: 16 x 2 x 4 passes at 6 / (8 x 4) s each: 24 s
    assert time_left(the_plan, [(6.0, 4), (6.0, None)], 8) == "≈ 1.2 min left incl. held-out scoring"


def score(label: str, value: float, steps: int = 5) -> HeldoutScore:
    return HeldoutScore(label, steps, list(range(steps)), Evaluation(value, {}, 8, float(steps), 1.0))


def test_the_heldout_line_compares_with_uniform_the_best_built_in_and_ays() -> None:
    baselines = [score("uniform", 0.5), score("trailing", 0.4), score("karras", 1.0),
                 score("ays (sd15, interpolated)", 0.2), score("uniform", 0.1, steps=6)]
    assert heldout_line(score("learned", 0.2), baselines, "minimize") == (
        "learned 0.2; vs uniform 0.5 (learned -60 %), best built-in trailing 0.4 (learned -50 %); "
        "ays (sd15, interpolated) 0.2 (learned +0 %)")
    psnr = [score("uniform", 20.0), score("trailing", 21.5)]
    assert heldout_line(score("learned", 22.0), psnr, "maximize") == (
        "learned 22; vs uniform 20 (learned +2), best built-in trailing 21.5 (learned +0.5)")


def test_quick_is_a_small_first_try_unless_told_otherwise() -> None:
    quick = TuneOptions(quick=True)  # fid: 2048 tuning samples by default
    assert (quick.settings().tuning_n, quick.settings().heldout_samples, quick.baselines) == (256, 64, False)
    told = TuneOptions(quick=True, objective="fidelity", n=12, heldout_n=100)
    assert (told.settings().tuning_n, told.settings().heldout_samples) == (12, 100)
    assert TuneOptions(quick=True, objective="fidelity").settings().tuning_n == 64  # already below 256
    with pytest.raises(ValueError, match="objective"):
        TuneOptions(quick=True, objective="fdi")


def test_the_catalogue_warm_start_can_be_left_out(tmp_path: Path) -> None:
    model = load_model("embedded")  # ships learned:fashion-mnist/dpmpp-2m-5
    tags = {}
    for shipped in (True, False):
        settings = TuneSettings(steps=(5,), solver="dpmpp-2m", catalogue_warm_start=shipped, dp_grid=8,
                                dp_trajectories=1, dp_fine_steps=8)
        tuner = Tuner(model, settings, optuna.storages.InMemoryStorage(), cache_dir=tmp_path)
        tags[shipped] = {tag for w in tuner.warm_starts([5], pareto=False) for tag in w.tag.split("+")}
    assert "catalogue" in tags[True] and "catalogue" not in tags[False]
    assert tags[True] - {"catalogue"} == tags[False]


def test_trials_0_with_export_and_nothing_stored_is_refused_before_any_work(tiny_model_dir: Path,
                                                                            tmp_path: Path) -> None:
    code, output = run_tune(tiny_model_dir, tmp_path, "--trials", "0", "--export", str(tmp_path / "e"))
    assert code != 0
    assert (f"--trials: 0 runs no trial, and the storage holds no complete trial of '{tiny_model_dir.name}-ddim-"
            "fidelity-free' to export; give --trials 1 or more") in output
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # no DP matrix, no reference
