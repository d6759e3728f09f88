"""Issue 15 on the command line: `--finish` (how a sample a monitor ends finishes) on `sample` and `eval`, and
`--policy steered:N` (SteeredPlan, steered by a `steer-NAME:LOW:HIGH` monitor). Each happy path is checked against
the library run it stands for (bitwise, same adapter rows); each bad value against the flag its one-line error names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from diffusers import DDIMScheduler

from adaptive_sampler.cli import app
from adaptive_sampler.finish import DEFAULT_FINISH, parse_finish
from adaptive_sampler.models import load_model
from adaptive_sampler.monitors import AnyOf, monitor_from_spec
from adaptive_sampler.options import DEFAULT_FINISH_SPEC
from adaptive_sampler.policies.step_size_control import SteeredPlan
from adaptive_sampler.sampler import SampleResult, sample
from helpers import build_tiny_unet, run_cli

# x0-l2 scores of the tiny model's 4 samples (seed 0) at step 4 of uniform 6 steps are 0.256, 0.173, 0.254, 0.199:
# samples 1 and 3 end there (t = 200), 0 and 2 run to the end
EXIT = "x0-l2:0.22"
STEER = "steer-x0-l2:0.2:1"  # the tiny model's x̂0 moves a lot: halved above 1, doubled below 0.2
ROWS = ("--network-rows", "8", "--device", "cpu")
UNIFORM_6 = [999, 799, 599, 400, 200, 0]
EARLY_EXIT = "x0-l2:0.5"  # with uniform 10 steps, samples 0-3 end after 6, 6, 8 and 7 evaluations
UNIFORM_10 = [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]


def _library(model_dir: Path, plan: list[int] | SteeredPlan, n: int, spec: str | None,
             finish: str | None = None) -> tuple[SampleResult, dict[int, str]]:
    """What the CLI should have run: the same model, rows (fixed:8), seed 0, one AnyOf over the --monitor."""
    loaded = load_model(str(model_dir))
    watch = AnyOf(monitor_from_spec(spec)) if spec else None
    result = sample(loaded.adapter(network_rows=8), plan, loaded.sample_shape, n, monitor=watch,
                    finish=parse_finish(finish))
    return result, watch.stopped_by if watch is not None else {}


def _ok(*args: object) -> None:
    run = run_cli(*args)
    assert run.code == 0, run.err


def test_the_cli_spells_the_library_default_finish_and_shows_both_flags():
    assert DEFAULT_FINISH_SPEC == DEFAULT_FINISH.spec() and parse_finish(None) == DEFAULT_FINISH
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for command in ("sample", "eval"):
        helps = {param.name: param.help for param in commands[command].params}
        assert f"default {DEFAULT_FINISH_SPEC}" in helps["finish"] and "steered:N" in helps["policy"]


# ------------------------------------------------------------------------------------------------------ --finish
@pytest.mark.parametrize("finish", [None, "x0", "tail", "tail:1", "tail:2:logsnr", " tail : 2 : t "])
def test_sample_finishes_monitor_ended_samples_as_the_library_does(tiny_model_dir, tmp_path, finish):
    save, report = tmp_path / "x.npy", tmp_path / "r.json"
    _ok("sample", "--model", tiny_model_dir, "--steps", 6, "--n", 4, "--monitor", EXIT, *ROWS, "--save", save,
        "--json", report, *(["--finish", finish] if finish is not None else []))
    expected, stopped = _library(tiny_model_dir, UNIFORM_6, 4, EXIT, finish)
    data = json.loads(report.read_text())
    assert data["finish"] == parse_finish(finish).spec()
    assert data["stopped_by"] == [stopped.get(i) for i in range(4)] == [None, EXIT, None, EXIT]
    assert data["nfe_per_sample"] == expected.nfe.tolist()
    assert np.array_equal(np.load(save), expected.samples.numpy())
    plan, tail = UNIFORM_6, parse_finish(finish)
    for i in (1, 3):  # ended at step 4 (t = 200): x̂0 there; with one evaluation left, a tail walks the plan's last
        assert expected.timesteps[i][:5] == plan[:5]
        assert data["nfe_per_sample"][i] == len(expected.timesteps[i]) == (5 if tail.mode == "x0" else 6)
    assert data["nfe_per_sample"][0] == data["nfe_per_sample"][2] == 6


def test_without_a_monitor_the_report_has_no_finish(tiny_model_dir, tmp_path):
    report = tmp_path / "r.json"
    _ok("sample", "--model", tiny_model_dir, "--steps", 2, "--n", 1, "--json", report)
    assert json.loads(report.read_text())["finish"] is None


def test_eval_takes_finish_and_a_steered_policy(tiny_model_dir, tmp_path):
    fidelity = ("eval", "--model", tiny_model_dir, "--n", 4, "--features", "fidelity", "--reference-steps", 6, *ROWS)
    _ok(*fidelity, "--steps", 10, "--monitor", EARLY_EXIT, "--finish", "tail:2", "--json", tmp_path / "finish.json")
    data = json.loads((tmp_path / "finish.json").read_text())
    expected, _ = _library(tiny_model_dir, UNIFORM_10, 4, EARLY_EXIT, "tail:2")
    # done after 6, 6, 8 and 7 of 10 evaluations: tails of 2, except sample 2 (2 left), which walks the plan
    assert data["finish"] == "tail:2:t" and data["nfe_per_sample"] == expected.nfe.tolist() == [8, 8, 10, 9]
    _ok(*fidelity, "--policy", "steered:4", "--monitor", STEER, "--json", tmp_path / "steered.json")
    data = json.loads((tmp_path / "steered.json").read_text())
    expected, _ = _library(tiny_model_dir, SteeredPlan(steps=4), 4, STEER)
    assert data["policy"] == "steered:4" and data["timesteps_per_sample"] == expected.timesteps
    assert data["finish"] == DEFAULT_FINISH_SPEC and data["psnr"] > 0


# ------------------------------------------------------------------------------------------------ steered:N
def test_sample_with_a_steered_policy_is_the_library_s_steered_plan(tiny_model_dir, tmp_path):
    save, report = tmp_path / "x.npy", tmp_path / "r.json"
    run = run_cli("sample", "--model", tiny_model_dir, "--policy", "steered:4", "--monitor", STEER, "--n", 4, *ROWS,
                  "--save", save, "--json", report)
    assert run.code == 0, run.err
    assert "4 samples, per-sample steps (steered:4, ddim)" in run.out
    expected, stopped = _library(tiny_model_dir, SteeredPlan(steps=4), 4, STEER)
    unsteered, _ = _library(tiny_model_dir, SteeredPlan(steps=4), 4, None)
    data = json.loads(report.read_text())
    assert data["policy"] == "steered:4" and data["steps"] is None and "timesteps" not in data
    assert data["timesteps_per_sample"] == expected.timesteps != unsteered.timesteps  # the monitor steered them
    assert len({tuple(ts) for ts in expected.timesteps}) > 1, "samples should be steered differently"
    assert data["rejected_per_sample"] == [0] * 4 and stopped == {} and data["stopped_by"] == [None] * 4
    assert data["nfe_per_sample"] == [len(ts) for ts in data["timesteps_per_sample"]]
    assert np.array_equal(np.load(save), expected.samples.numpy())


def test_a_steered_policy_with_an_ending_and_a_steering_monitor_and_a_tail(tiny_model_dir, tmp_path):
    spec, save, report = f"x0-l2:0.3|{STEER}", tmp_path / "x.npy", tmp_path / "r.json"
    _ok("sample", "--model", tiny_model_dir, "--policy", "steered:4", "--monitor", spec, "--finish", "tail", "--n",
        4, *ROWS, "--save", save, "--json", report)
    expected, stopped = _library(tiny_model_dir, SteeredPlan(steps=4), 4, spec, "tail")
    data = json.loads(report.read_text())
    assert data["finish"] == "tail:3:t" and data["timesteps_per_sample"] == expected.timesteps
    assert data["stopped_by"] == [stopped.get(i) for i in range(4)] and any(data["stopped_by"])
    assert data["nfe_per_sample"] == expected.nfe.tolist() == [len(ts) for ts in expected.timesteps]
    assert torch.equal(torch.from_numpy(np.load(save)), expected.samples)


def test_steered_n_may_reach_the_model_s_timesteps_and_no_further(tmp_path):
    """The bound is the model's own num_train_timesteps (50 here), read from its scheduler config."""
    build_tiny_unet().save_pretrained(tmp_path / "m")
    DDIMScheduler(num_train_timesteps=50).save_config(tmp_path / "m")
    base = ("sample", "--model", tmp_path / "m", "--n", 1, "--json", tmp_path / "r.json", *ROWS)
    _ok(*base, "--policy", "steered:50")
    assert json.loads((tmp_path / "r.json").read_text())["timesteps_per_sample"][0][0] == 49
    run = run_cli(*base, "--policy", "steered:51")
    assert run.err_lines == ["error: --policy: 'steered:51' has N = 51, above the model's 50 training timesteps; "
                             "write steered:N with N a whole number of steps, from 1 to 50, e.g. steered:20"]


# ------------------------------------------------------------------------------------------ errors name the flag
FINISH_RULE = ("write x0, tail, tail:K or tail:K:SPACING with K an integer in [1, 10] and SPACING logsnr or t")
STEERED_RULE = "write steered:N with N a whole number of steps, at least 1, e.g. steered:20"
STATIC = "steers step sizes{}, but policy {!r} is a static list, which cannot change its steps; use --policy steered:N"
ERRORS = [
    *[pytest.param(["--steps", "3", "--monitor", EXIT, "--finish", value], f"--finish: {value!r} {rule}", id=value)
      for value, rule in [
          ("bogus", f"is not a finish mode; {FINISH_RULE}"),
          ("", f"is not a finish mode; {FINISH_RULE}"),
          ("x0:1", f"is not a finish mode; {FINISH_RULE}"),
          ("tail:1:t:2", f"is not a finish mode; {FINISH_RULE}"),
          ("tail:x", f"has K = 'x', which is not an integer; {FINISH_RULE}"),
          ("tail:0", f"is refused (Input should be greater than or equal to 1); {FINISH_RULE}"),
          ("tail:11", f"is refused (Input should be less than or equal to 10); {FINISH_RULE}"),
          ("tail:3:sigma", f"is refused (Input should be 'logsnr' or 't'); {FINISH_RULE}"),
      ]],
    pytest.param(["--steps", "3", "--finish", "tail"], "--finish: 'tail' is given without --monitor; it says how a "
                 "sample a monitor ends early finishes, so add a --monitor or drop --finish", id="finish-no-monitor"),
    pytest.param(["--steps", "3", "--finish", "x0"], "--finish: 'x0' is given without --monitor", id="x0-no-monitor"),
    *[pytest.param(["--policy", value, "--monitor", STEER], f"--policy: {value!r} {rule}", id=value or "empty")
      for value, rule in [
          ("steered:0", f"has N = 0; {STEERED_RULE}"),
          ("steered:-1", f"has N = -1; {STEERED_RULE}"),
          ("steered:x", f"has N = 'x', which is not a whole number; {STEERED_RULE}"),
          ("steered:2.5", f"has N = '2.5', which is not a whole number; {STEERED_RULE}"),
          ("steered:", f"has N = '', which is not a whole number; {STEERED_RULE}"),
          ("steered", f"is not a steered policy; {STEERED_RULE}"),
          ("steered4", f"is not a steered policy; {STEERED_RULE}"),
          ("steered:1001", "has N = 1001, above the model's 1000 training timesteps"),
      ]],
    pytest.param(["--policy", "steered:4", "--steps", "4"], "--steps: 4 is not allowed with --policy steered:4",
                 id="steered-steps"),
    pytest.param(["--policy", "steered:4", "--timesteps", "999,0"], "--timesteps: '999,0' is given together with "
                 "--policy 'steered:4'", id="steered-timesteps"),
    pytest.param(["--steps", "3", "--monitor", STEER], f"--monitor: {STEER!r} {STATIC.format('', 'uniform')}",
                 id="steering-uniform"),
    pytest.param(["--steps", "3", "--policy", "karras", "--monitor", "max-nfe:9", "--monitor", f"x0-l2:0.05|{STEER}"],
                 f"--monitor: 'x0-l2:0.05|{STEER}' {STATIC.format(f' ({STEER}.0)', 'karras')}",
                 id="steering-composite"),
    pytest.param(["--timesteps", "999,500,0", "--monitor", f"{STEER},min_steps=2"],
                 f"--monitor: '{STEER},min_steps=2' {STATIC.format('', 'explicit')}", id="steering-explicit"),
]


@pytest.mark.parametrize("command", ["sample", "eval"])
@pytest.mark.parametrize(("args", "message"), ERRORS)
def test_bad_finish_and_steering_values_are_one_line_naming_the_flag(tiny_model_dir, command, args, message):
    run = run_cli(command, "--model", tiny_model_dir, "--n", 129, *ROWS, *args)
    assert run.code == 2 and run.out == ""
    assert len(run.err_lines) == 1 and run.err_lines[0].startswith(f"error: {message}"), run.err
    assert "sampling" not in run.err  # refused before the first network call (no progress bar started)
