"""FieldError: the library's entry points locate bad input as (field, value, rule); nothing parses messages."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from adaptive_sampler import ModelAdapter, make_policy, sample
from adaptive_sampler.errors import FieldError, FileFieldError, did_you_mean
from adaptive_sampler.models import load_model
from adaptive_sampler.monitors.spec import monitor_from_spec
from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.schedules.artifact import ScheduleArtifact
from adaptive_sampler.solvers import make_solver
from adaptive_sampler.timesteps import validate_timesteps
from adaptive_sampler.tuning import get_objective

LINEAR = NoiseSchedule.from_config({"num_train_timesteps": 1000})


def _zero_network(x, t, **kwargs):
    return torch.zeros_like(x)


def test_message_is_field_value_rule_and_root_drops_the_index():
    err = FieldError("timesteps[3]", 500, "is above timesteps[2]=400")
    assert isinstance(err, ValueError)
    assert str(err) == "timesteps[3]: 500 is above timesteps[2]=400"
    assert (err.field, err.value, err.rule, err.root) == ("timesteps[3]", 500, "is above timesteps[2]=400",
                                                          "timesteps")
    assert str(FieldError("solver", "euler", "is not one of ddim")) == "solver: 'euler' is not one of ddim"


@pytest.mark.parametrize(("values", "field", "value"), [
    ([10, 20], "timesteps[1]", 20),
    ([5, 5], "timesteps[1]", 5),
    ([1000, 5], "timesteps[0]", 1000),
    ([999, 999.5], "timesteps[1]", 999.5),
    ([999, float("-inf")], "timesteps[1]", float("-inf")),
    ([999, "x"], "timesteps[1]", "x"),
    ([], "timesteps", []),
    (torch.tensor([[999, 0]]), "timesteps", (1, 2)),
    (np.array([[999, 0]]), "timesteps", (1, 2)),
    (np.array([500, 600]), "timesteps[1]", 600),
])
def test_validate_timesteps_raises_field_errors(values, field, value):
    with pytest.raises(FieldError) as caught:
        validate_timesteps(values, 1000)
    assert (caught.value.field, caught.value.value) == (field, value)
    assert caught.value.root == "timesteps"


@pytest.mark.parametrize("values", [
    np.array([999, 500, 0]),
    np.array([999, 500, 0], dtype=np.int32),
    np.array([999, 500, 0], dtype=np.uint16),
    np.array([999.0, 500.0, 0.0], dtype=np.float32),
    [np.int64(999), np.int32(500), np.uint8(0)],
    [np.float64(999.0), 500, np.int16(0)],
])
def test_validate_timesteps_accepts_numpy_integers(values):
    planned = validate_timesteps(values, 1000)
    assert planned.dtype == torch.int64 and planned.tolist() == [999, 500, 0]


def test_validate_timesteps_refuses_numpy_booleans_and_fractions():
    with pytest.raises(FieldError) as caught:
        validate_timesteps([np.int64(999), np.bool_(True)], 1000)
    assert (caught.value.field, caught.value.value) == ("timesteps[1]", True)
    with pytest.raises(FieldError, match=r"^timesteps\[1\]: 0.5 is not an integer") as caught:
        validate_timesteps(np.array([999.0, 0.5]), 1000, integers=True)
    assert caught.value.value == 0.5


@pytest.mark.parametrize("num_steps", [0, 1001, None])
def test_a_policy_with_a_bad_step_count(num_steps):
    with pytest.raises(FieldError) as caught:
        make_policy("uniform").timesteps(num_steps, LINEAR)
    assert (caught.value.field, caught.value.value) == ("num_steps", num_steps)


def test_make_policy_and_make_solver_name_their_field():
    with pytest.raises(FieldError) as caught:
        make_policy("nope")
    assert (caught.value.field, caught.value.value) == ("policy", "nope")
    with pytest.raises(FieldError) as caught:
        make_solver("euler")
    assert (caught.value.field, caught.value.value) == ("solver", "euler")


@pytest.mark.parametrize(("spec", "value"), [("blur:0.1", "blur"), ("x0-l2:abc", "x0-l2:abc"), ("", ""),
                                             ("x0-l2:-1", "x0-l2:-1")])
def test_monitor_from_spec_names_the_monitor_field(spec, value):
    with pytest.raises(FieldError) as caught:
        monitor_from_spec(spec)
    assert (caught.value.field, caught.value.value) == ("monitor", value)


def test_eta_with_a_deterministic_solver():
    adapter = ModelAdapter(_zero_network, LINEAR)
    with pytest.raises(FieldError) as caught:
        sample(adapter, [999, 500, 0], (1, 4, 4), 1, eta=0.5, solver=make_solver("dpmpp-2m"))
    assert (caught.value.field, caught.value.value) == ("eta", 0.5)


def test_model_adapter_settings():
    with pytest.raises(FieldError) as caught:
        ModelAdapter(_zero_network, LINEAR, prediction_type="noise")  # type: ignore[arg-type]
    assert (caught.value.field, caught.value.value) == ("prediction_type", "noise")
    with pytest.raises(FieldError) as caught:
        ModelAdapter(_zero_network, LINEAR, network_rows=0)
    assert (caught.value.field, caught.value.value) == ("network_rows", 0)


def test_load_model_of_a_missing_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FieldError) as caught:
        load_model(missing)
    assert (caught.value.field, caught.value.value) == ("model", str(missing))


def test_a_bad_schedule_file_is_a_validation_error_located_at_the_timestep(tmp_path):
    """Pydantic models keep raising ValidationError; the FieldError of the list is its cause, with the index."""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"num_train_timesteps": 1000, "timesteps": [999, 1200, 0], "model": {"name": "tiny"},
                                "method": "test"}))
    with pytest.raises(ValidationError) as caught:
        ScheduleArtifact.load(path)
    errors = [e for e in caught.value.errors() if e["loc"] == ("timesteps",)]
    assert len(errors) == 1
    cause = errors[0]["ctx"]["error"]
    assert isinstance(cause, FieldError) and (cause.field, cause.value) == ("timesteps[1]", 1200)


@pytest.mark.parametrize(("build", "field", "value", "suggestion"), [
    (lambda: make_policy("karas"), "policy", "karas", " (did you mean 'karras'?)"),
    (lambda: make_policy("steerd:20"), "policy", "steerd:20", " (did you mean 'steered:20'?)"),
    (lambda: make_solver("unpic"), "solver", "unpic", " (did you mean 'unipc'?)"),
    (lambda: monitor_from_spec("ssmi:0.1"), "monitor", "ssmi", " (did you mean 'ssim'?)"),
    (lambda: get_objective("fidelty"), "objective", "fidelty", " (did you mean 'fidelity'?)"),
])
def test_a_mistyped_name_is_located_and_gets_the_closest_name(build, field, value, suggestion):
    with pytest.raises(FieldError) as caught:
        build()
    assert (caught.value.field, caught.value.value) == (field, value)
    assert suggestion in caught.value.rule


def test_did_you_mean_says_nothing_when_no_name_is_close():
    assert did_you_mean("bogus", ("ddim", "dpmpp-2m", "unipc")) == ""
    assert did_you_mean("adaptve", ("uniform", "adaptive:<tolerance>")) == " (did you mean 'adaptive:<tolerance>'?)"


@pytest.mark.timeout(30)
def test_a_fifo_is_refused_as_a_schedule_file_before_it_is_opened(tmp_path):
    fifo = tmp_path / "schedule.json"
    os.mkfifo(fifo)  # opening it to read would wait for a writer forever
    with pytest.raises(FileFieldError, match="is not a regular file") as caught:
        ScheduleArtifact.read(fifo, field="policy")
    assert caught.value.field == "policy"
    with pytest.raises(FileFieldError, match="is not a regular file") as caught:
        ScheduleArtifact.load(fifo)
    assert caught.value.field == "path"
    with pytest.raises(FileFieldError, match="is a folder") as caught:
        ScheduleArtifact.load(tmp_path)


def test_exporting_without_a_complete_trial_names_trials(tmp_path):
    import typer

    from adaptive_sampler.cli import app, flag_error
    from adaptive_sampler.tuning.export import export_best

    tuner = SimpleNamespace(best=lambda: [], settings=SimpleNamespace(trials=0))
    with pytest.raises(FieldError) as caught:
        export_best(tuner, tmp_path)  # type: ignore[arg-type]
    assert (caught.value.field, caught.value.value) == ("trials", 0)
    command = typer.main.get_command(app).commands["tune"]  # type: ignore[attr-defined]
    assert str(flag_error(caught.value, command)).startswith("--trials: 0 left the studies without a complete trial")
