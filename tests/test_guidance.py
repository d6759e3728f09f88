"""Guidance counted in network evaluations, and the guidance interval (issue 29): `evals` per sample (2 per guided
step, 1 per unguided one, rejected steps included), an interval over every step is plain guidance bitwise, one over
no step is the unguided conditional run bitwise, a partial one leaves the unconditional rows out of the network
calls, samples stay bitwise the same in any batch, and bad intervals are FieldErrors before any network call."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.guidance import GuidanceInterval
from adaptive_sampler.model_adapter import Conditioning, ModelAdapter
from adaptive_sampler.models import load_model
from adaptive_sampler.pipeline import Conditions
from adaptive_sampler.policies.step_size_control import StepSizeControl
from adaptive_sampler.sampler import sample
from adaptive_sampler.schedules.artifact import ConditionsRecord, ScheduleArtifact
from adaptive_sampler.tuning.export import conditions_record
from helpers import TINY_SHAPE, RowCounter, build_tiny_conditional_unet, build_tiny_unet, run_cli, tiny_scheduler_config

SHAPE = (4, 8, 8)
LIST = [999, 833, 666, 500, 333, 166]


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


COND, UNCOND = _randn(6, 5, 16, seed=1), _randn(1, 5, 16, seed=2)


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    return build_tiny_conditional_unet()


def conditioning(interval: GuidanceInterval | None, scale: float = 3.0) -> Conditioning:
    return Conditioning({"encoder_hidden_states": COND}, {"encoder_hidden_states": UNCOND}, scale,
                        guidance_interval=interval)


def run(network, interval, *, scale=3.0, n=3, batch_size=3, plan=LIST, network_rows="auto", **kwargs):
    adapter = ModelAdapter.from_diffusers(network, tiny_scheduler_config(), network_rows=network_rows)
    return sample(adapter, plan, SHAPE, n, batch_size=batch_size, conditioning=conditioning(interval, scale),
                  **kwargs)


# ---------------------------------------------------------------- evals, and what the interval does


def test_an_interval_over_every_step_is_plain_guidance_bitwise(unet):
    plain = run(unet, None)
    covering = run(unet, GuidanceInterval(999, 0))
    assert torch.equal(covering.samples, plain.samples)
    assert plain.nfe.tolist() == [6] * 3 and plain.evals_per_sample.tolist() == [12] * 3
    assert covering.evals_per_sample.tolist() == [12] * 3 and covering.evals_mean == 12.0


def test_an_interval_over_no_step_is_the_unguided_conditional_run_bitwise(unet):
    network = RowCounter(unet)
    outside = run(network, GuidanceInterval(100.5, 20), network_rows=None)  # no step of LIST lies in it
    assert network.rows == [3] * 6  # the unconditional rows never reach the network
    unguided = run(unet, None, scale=1.0, network_rows=None)
    assert torch.equal(outside.samples, unguided.samples)
    assert outside.evals_per_sample.tolist() == outside.nfe.tolist() == [6] * 3
    assert unguided.evals_per_sample.tolist() == [6] * 3


def test_a_partial_interval_costs_steps_plus_guided_steps_and_sends_fewer_rows(unet):
    network = RowCounter(unet)
    result = run(network, GuidanceInterval(700, 200), network_rows=None)
    assert network.rows == [3, 3, 6, 6, 6, 3]  # 666, 500 and 333 are guided: 3 uncond + 3 cond rows
    assert result.nfe.tolist() == [6] * 3 and result.evals_per_sample.tolist() == [6 + 3] * 3
    assert result.evals_mean == 9.0
    # the bounds are inclusive and may be fractional
    network.rows.clear()
    inclusive = run(network, GuidanceInterval(666, 499.5), network_rows=None)
    assert network.rows == [3, 3, 6, 6, 3, 3] and inclusive.evals_per_sample.tolist() == [8] * 3
    assert not torch.equal(result.samples, run(unet, None, network_rows=None).samples)


def test_fractional_timesteps_are_compared_as_they_reach_the_network(unet):
    network = RowCounter(unet)
    result = run(network, GuidanceInterval(700.5, 650.3), plan=[999.0, 700.5, 650.25, 300.0], network_rows=None)
    assert network.rows == [3, 6, 3, 3] and result.evals_per_sample.tolist() == [5] * 3


def test_a_guided_interval_is_bitwise_the_same_in_any_batch(unet):
    interval = GuidanceInterval(700, 200)
    for plan in (LIST, StepSizeControl(tolerance=0.05)):  # per-sample steps: rows of one batch inside and outside
        runs = [run(unet, interval, n=6, batch_size=size, plan=plan, trace=size == 6) for size in (6, 4, 1)]
        for other in runs[1:]:
            assert torch.equal(other.samples, runs[0].samples)
            assert torch.equal(other.evals_per_sample, runs[0].evals_per_sample)
            assert torch.equal(other.nfe, runs[0].nfe)
    trace = runs[0].trace
    assert trace is not None
    mixed = [info for info in trace if 0 < int(interval.covers(info.t).sum()) < len(info.t)]
    assert mixed, "no evaluation had rows both inside and outside the interval"
    # evals = NFE + the evaluations each sample made inside the interval, rejected ones included
    inside = torch.zeros(6, dtype=torch.int64)
    for info in trace:
        inside.index_add_(0, info.sample_indices, interval.covers(info.t).long())
    assert int(runs[0].rejected.sum()) > 0
    assert torch.equal(runs[0].evals_per_sample, runs[0].nfe + inside)


def test_evals_equal_nfe_without_guidance():
    adapter = ModelAdapter.from_diffusers(build_tiny_unet(), tiny_scheduler_config())
    static = sample(adapter, LIST, TINY_SHAPE, 3)
    assert torch.equal(static.evals_per_sample, static.nfe) and static.evals_mean == static.nfe_mean == 6.0
    controlled = sample(adapter, StepSizeControl(tolerance=0.05), TINY_SHAPE, 4)  # rejected steps included
    assert int(controlled.rejected.sum()) > 0 and torch.equal(controlled.evals_per_sample, controlled.nfe)
    scale_one = run(build_tiny_conditional_unet(), None, scale=1.0)
    assert torch.equal(scale_one.evals_per_sample, scale_one.nfe)


# ---------------------------------------------------------------- bad input, before any network call


@pytest.mark.parametrize(("text", "rule"), [
    ("700", "is not two numbers; give HIGH:LOW"),
    ("700:200:100", "is not two numbers"),
    ("a:200", "is not two numbers"),
    ("", "is not two numbers"),
    ("nan:200", "is not HIGH:LOW"),
    ("200:700", "has HIGH <= LOW; give the higher timestep first"),
    ("500:500", "has HIGH <= LOW"),
    ("100:-5", "has LOW below 0"),
])
def test_a_bad_interval_text_names_the_field_the_value_and_the_rule(text, rule):
    with pytest.raises(FieldError, match=rf"^guidance_interval: .* {rule}") as caught:
        GuidanceInterval.parse(text)
    assert caught.value.field == "guidance_interval"


@pytest.mark.parametrize(("conditioning", "message"), [
    (conditioning(GuidanceInterval(1000, 200)), "guidance_interval: '1000:200' is outside [0, 999]"),
    (conditioning(GuidanceInterval(700, 200), scale=1.0), "needs classifier-free guidance, but the conditioning has "
                                                          "guidance_scale 1"),
    (Conditioning({"encoder_hidden_states": COND}, None, 3.0, guidance_interval=GuidanceInterval(700, 200)),
     "has no unconditional branch (uncond)"),
    (conditioning("700:200"), "is not a GuidanceInterval"),  # type: ignore[arg-type]
])
def test_the_sampler_refuses_a_bad_interval_before_any_network_call(unet, conditioning, message):
    network = RowCounter(unet)
    adapter = ModelAdapter.from_diffusers(network, tiny_scheduler_config())
    with pytest.raises(FieldError, match=r"^guidance_interval: ") as caught:
        sample(adapter, LIST, SHAPE, 2, conditioning=conditioning)
    assert message in str(caught.value) and network.rows == []


# ---------------------------------------------------------------- conditions, identity, schedule files


def test_conditions_bind_the_interval_and_it_changes_the_identity(tiny_sd_dir):
    model = load_model(tiny_sd_dir)
    plain = model.with_conditions(Conditions(prompts=("a cat",), guidance_scale=3.0)).conditions
    banded = model.with_conditions(Conditions.from_flags(prompt="a cat", guidance_scale=3.0,
                                                         guidance_interval="700:200.5")).conditions
    assert plain is not None and banded is not None
    assert banded.conditioning.guidance_interval == GuidanceInterval(700, 200.5)
    assert banded.conditioning.select(torch.arange(2)).guidance_interval == GuidanceInterval(700, 200.5)
    assert "guidance_interval" not in plain.identity()  # identities from before the interval are unchanged
    assert banded.identity()["guidance_interval"] == "700:200.5"
    assert banded.identity()["sha256"] != plain.identity()["sha256"]
    record = conditions_record(banded)
    assert record is not None and record.guidance_interval == (700.0, 200.5)


def test_conditions_refuse_an_interval_the_model_cannot_use(tiny_sd_dir, tiny_class_dir, tiny_rgb_dir):
    cases = [
        (tiny_sd_dir, Conditions(prompts=("a",), guidance_interval=GuidanceInterval(1000, 10)), "is outside [0, 999]"),
        (tiny_sd_dir, Conditions(prompts=("a",), guidance_scale=1.0, guidance_interval=GuidanceInterval(700, 10)),
         "has no effect without guidance"),
        (tiny_class_dir, Conditions(labels=(1,), guidance_interval=GuidanceInterval(700, 10)),
         "a class-conditional UNet has no null class, so guidance is out of scope there"),
        (tiny_rgb_dir, Conditions(guidance_interval=GuidanceInterval(700, 10)), "has no unconditional branch"),
    ]
    for folder, conditions, rule in cases:
        with pytest.raises(FieldError) as caught:
            load_model(folder).with_conditions(conditions)
        assert caught.value.field == "guidance_interval" and rule in str(caught.value), str(caught.value)


def _artifact_json(conditions: dict) -> dict:
    return {"format_version": 1, "num_train_timesteps": 1000, "timesteps": [999, 500, 0],
            "model": {"name": "m", "weights_sha256": "ab" * 32}, "conditions": conditions, "method": "hand"}


def test_a_schedule_file_without_a_guidance_interval_still_loads_and_one_with_it_round_trips(tmp_path):
    old = {"prompts_sha256": "cd" * 32, "prompts_file": None, "negative_prompt": None, "guidance_scale": 3.0,
           "labels": None}  # a file written before the interval was recorded
    path = tmp_path / "old.json"
    path.write_text(json.dumps(_artifact_json(old)))
    loaded = ScheduleArtifact.load(path)
    assert loaded.conditions is not None and loaded.conditions.guidance_interval is None
    banded = loaded.model_copy(update={"conditions": ConditionsRecord(**{**old, "guidance_interval": (700, 200)})})
    banded.save(tmp_path / "new.json")
    again = ScheduleArtifact.load(tmp_path / "new.json")
    assert again.conditions is not None and again.conditions.guidance_interval == (700.0, 200.0)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_artifact_json({**old, "guidance_interval": [200, 700]})))
    with pytest.raises(ValueError, match="HIGH <= LOW"):
        ScheduleArtifact.load(bad)


# ---------------------------------------------------------------- the command line


def test_sample_with_a_guidance_interval_reports_evals_and_is_batch_size_invariant(tiny_sd_dir, tmp_path):
    reports = {}
    for batch in (5, 2):
        report = tmp_path / f"b{batch}.json"
        run = run_cli("sample", "--model", tiny_sd_dir, "--prompt", "a red car", "--guidance-interval", "700:200",
                      "--steps", 5, "--n", 5, "--batch-size", batch, "--save", tmp_path / f"b{batch}.npy", "--json",
                      report, "--device", "cpu")
        assert run.code == 0, run.err
        reports[batch] = json.loads(report.read_text())
        assert "evals mean" in run.out
    data = reports[5]
    guided = sum(200 <= t <= 700 for t in data["timesteps"])
    assert 0 < guided < 5 and data["guidance_interval"] == "700:200"
    assert data["nfe_per_sample"] == [5] * 5 and data["evals_per_sample"] == [5 + guided] * 5
    assert data["evals_mean"] == 5 + guided
    assert reports[2]["evals_per_sample"] == data["evals_per_sample"]
    assert np.array_equal(np.load(tmp_path / "b5.npy"), np.load(tmp_path / "b2.npy"))


def test_without_guidance_the_report_s_evals_are_its_nfe(tiny_model_dir, tmp_path):
    report = tmp_path / "r.json"
    run = run_cli("sample", "--model", tiny_model_dir, "--steps", 3, "--n", 2, "--json", report, "--device", "cpu")
    assert run.code == 0, run.err
    data = json.loads(report.read_text())
    assert data["evals_per_sample"] == data["nfe_per_sample"] == [3, 3] and math.isclose(data["evals_mean"], 3)
    assert "evals" not in run.out
