"""ScheduleArtifact (JSON round trip, atomic save, validation locations, σ/ComfyUI exports), the shipped catalogue
and the policies that replay artifacts (CatalogueEntry, FromFile)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.schedulers import AysSchedules
from pydantic import ValidationError

from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.policies import (
    CatalogueEntry,
    FromFile,
    check_model,
    check_solver,
    interpolated_from,
    make_policy,
)
from adaptive_sampler.schedules.artifact import (
    ConditionsRecord,
    ModelIdentity,
    NoiseScheduleSpec,
    ScheduleArtifact,
    noise_schedule_mismatch,
)
from adaptive_sampler.schedules.catalogue import catalogue_dir, interpolate, list_entries, load_entry
from adaptive_sampler.timesteps import validate_timesteps

SD_SPEC = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
SD15_AYS = AysSchedules["StableDiffusionTimesteps"]
SDXL_AYS = AysSchedules["StableDiffusionXLTimesteps"]


def make_artifact(**overrides) -> ScheduleArtifact:
    fields = dict(
        num_train_timesteps=1000,
        timesteps=[999, 700, 400, 100, 0],
        model=ModelIdentity(name="tiny", weights_sha256="ab" * 32),
        noise_schedule=NoiseScheduleSpec(**SD_SPEC),
        objective="fid",
        metrics={"fid": 12.5},
        method="test",
        created_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
    )
    return ScheduleArtifact(**{**fields, **overrides})


# ---------------------------------------------------------------- JSON round trip


def test_json_round_trip(tmp_path):
    artifact = make_artifact()
    path = tmp_path / "nested" / "schedule.json"
    artifact.save(path)
    loaded = ScheduleArtifact.load(path)
    assert loaded == artifact
    assert loaded.model_dump() == artifact.model_dump()
    raw = json.loads(path.read_text())
    assert raw["format_version"] == 1 and raw["timesteps"] == [999, 700, 400, 100, 0]
    assert sorted(os.listdir(path.parent)) == ["schedule.json"]  # no temp file left behind


def test_save_replaces_atomically_and_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "schedule.json"
    make_artifact().save(path)
    make_artifact(timesteps=[999, 0]).save(path)
    assert ScheduleArtifact.load(path).timesteps == [999, 0]

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        make_artifact(timesteps=[500]).save(path)
    assert ScheduleArtifact.load(path).timesteps == [999, 0]
    assert sorted(os.listdir(tmp_path)) == ["schedule.json"]


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("timesteps", "message"),
    [
        ([], "timesteps: [] is empty"),
        ([999, "3.5"], "timesteps[1]: '3.5' is not a finite number"),
        ([999, 500, 500], "timesteps[2]: 500 repeats timesteps[1]; timesteps must be unique"),
        ([10, 20], "timesteps[1]: 20 is above timesteps[0]=10; timesteps must be strictly descending"),
        ([5, -1], "timesteps[1]: -1 is outside [0, 999]"),
        ([1000], "timesteps[0]: 1000 is outside [0, 999]"),
    ],
)
def test_bad_timesteps_fail_at_field_timesteps_naming_index_value_and_rule(timesteps, message):
    with pytest.raises(ValidationError) as caught:
        make_artifact(timesteps=timesteps)
    errors = caught.value.errors()
    assert len(errors) == 1
    assert errors[0]["loc"] == ("timesteps",)
    assert message in errors[0]["msg"]


def test_bad_timesteps_in_a_json_file_fail_at_field_timesteps(tmp_path):
    path = tmp_path / "bad.json"
    raw = json.loads(make_artifact().model_dump_json())
    raw["timesteps"] = [0, 999]
    path.write_text(json.dumps(raw))
    with pytest.raises(ValidationError) as caught:
        ScheduleArtifact.load(path)
    assert caught.value.errors()[0]["loc"] == ("timesteps",)
    assert "timesteps[1]: 999 is above timesteps[0]=0" in caught.value.errors()[0]["msg"]


@pytest.mark.parametrize(
    ("overrides", "loc"),
    [
        ({"bogus": 1}, ("bogus",)),
        ({"model": {"name": "tiny", "extra": 1}}, ("model", "extra")),
        ({"noise_schedule": {**SD_SPEC, "clip_sample": True}}, ("noise_schedule", "clip_sample")),
    ],
)
def test_extra_fields_are_forbidden(overrides, loc):
    with pytest.raises(ValidationError) as caught:
        make_artifact(**overrides)
    errors = caught.value.errors()
    assert [e["loc"] for e in errors] == [loc]
    assert errors[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    ("overrides", "loc"),
    [
        ({"eta": 1.5}, ("eta",)),
        ({"solver": "euler"}, ("solver",)),
        ({"format_version": 2}, ("format_version",)),
        ({"method": ""}, ("method",)),
        ({"model": {"name": "tiny", "weights_sha256": "xyz"}}, ("model", "weights_sha256")),
        ({"num_train_timesteps": 0}, ("num_train_timesteps",)),  # and no second error about timesteps
    ],
)
def test_other_bad_fields_fail_at_their_location(overrides, loc):
    with pytest.raises(ValidationError) as caught:
        make_artifact(**overrides)
    assert [e["loc"] for e in caught.value.errors()] == [loc]


# ---------------------------------------------------------------- exports


def test_to_sigmas_has_n_plus_one_values_ending_in_zero():
    artifact = make_artifact()
    sigmas = artifact.to_sigmas()
    assert len(sigmas) == len(artifact.timesteps) + 1
    assert sigmas[-1] == 0.0
    ac = DDIMScheduler(**SD_SPEC).alphas_cumprod.double()[artifact.timesteps]
    np.testing.assert_allclose(sigmas[:-1], ((1 - ac) / ac).sqrt().numpy(), rtol=1e-12)
    assert sigmas[:-1] == sorted(sigmas[:-1], reverse=True)
    assert artifact.to_diffusers_timesteps() == [999, 700, 400, 100, 0]


def test_to_sigmas_needs_a_matching_schedule():
    artifact = make_artifact(noise_schedule=None)
    with pytest.raises(ValueError, match=r"^schedule: None cannot be used: the artifact has no noise_schedule"):
        artifact.to_sigmas()
    own = NoiseSchedule.from_config(SD_SPEC)
    assert artifact.to_sigmas(own) == make_artifact().to_sigmas()
    with pytest.raises(ValueError, match=r"^schedule: 500 training timesteps differ"):
        artifact.to_sigmas(NoiseSchedule.from_config({"num_train_timesteps": 500}))


def test_comfyui_text():
    artifact = make_artifact()
    text = artifact.to_comfyui_sigmas()
    parts = text.split(", ")
    assert len(parts) == len(artifact.timesteps) + 1
    assert parts[-1] == "0.000000"
    assert all(len(p.split(".")[1]) == 6 for p in parts)
    np.testing.assert_allclose([float(p) for p in parts], artifact.to_sigmas(), atol=5e-7)


def test_sd15_ays_sigmas_are_close_to_the_published_sigmas():
    """AYS publishes σ lists too; our σ at the published timesteps agree to a few percent (they were optimised
    separately, so not exactly)."""
    sigmas = load_entry("sd15/ays-10").to_sigmas()
    np.testing.assert_allclose(sigmas[:-1], AysSchedules["StableDiffusionSigmas"][:-1], rtol=0.1)


# ---------------------------------------------------------------- catalogue


def test_catalogue_ships_the_published_ays_lists():
    entries = list_entries()
    assert "sd15/ays-10" in entries and "sdxl/ays-10" in entries
    assert entries == sorted(entries)
    assert load_entry("sd15/ays-10").timesteps == SD15_AYS == [999, 850, 736, 645, 545, 455, 343, 233, 124, 24]
    assert load_entry("sdxl/ays-10").timesteps == SDXL_AYS == [999, 845, 730, 587, 443, 310, 193, 116, 53, 13]
    for name in entries:
        artifact = load_entry(name)
        assert not artifact.interpolated
        validate_timesteps(artifact.timesteps, artifact.num_train_timesteps)


# a searched list for every solver and budget, each of which beat uniform and the best built-in held out
# (experiments/bench_search.py --ship)
# ddim-4 was withdrawn under the shipping rule (tests/test_shipping_rule.py): worse than trailing in the held-out space
FASHION_MNIST_LISTS = {f"{solver}-{steps}" for solver in ("ddim", "dpmpp-2m", "unipc")
                       for steps in (4, 5, 6, 8, 10)} - {"ddim-4"}


def test_the_embedded_models_learned_lists_are_made_for_their_weights_and_scored_held_out():
    """Every learned list of an embedded model is made for the shipped weights and its solver, and carries a
    held-out FID on 2,000 samples."""
    from adaptive_sampler.models import load_model

    weights = {"fashion-mnist": load_model("embedded").weights_sha256,
               "embedded-t2i": load_model("embedded-t2i").weights_sha256}
    entries = list_entries()
    assert {name.split("/")[1] for name in entries if name.startswith("fashion-mnist/")} == FASHION_MNIST_LISTS
    for name in entries:
        model, family_steps = name.split("/")
        if model not in weights:
            continue
        artifact = load_entry(name)
        family, steps = family_steps.rsplit("-", 1)
        assert (artifact.solver, len(artifact.timesteps)) == (family, int(steps)), name
        assert artifact.model.weights_sha256 == weights[model], name
        assert artifact.metrics["heldout_n"] >= 2000 and artifact.metrics["heldout_fid"] > 0, name
        validate_timesteps(artifact.timesteps, artifact.num_train_timesteps)


def test_the_policies_readme_lists_every_file_with_its_solver_steps_and_heldout_fid():
    table = {}
    for line in (catalogue_dir() / "README.md").read_text().splitlines():
        if line.startswith("| ") and ".json |" in line:
            model, file, solver, steps, _how, fid = (cell.strip() for cell in line.strip("|").split("|"))
            table[f"{model}/{file.removesuffix('.json')}"] = (solver, int(steps), fid)
    assert sorted(table) == list_entries()
    for name, row in table.items():
        artifact = load_entry(name)
        heldout = artifact.metrics.get("heldout_fid")
        assert row == (artifact.solver, len(artifact.timesteps), "—" if heldout is None else f"{heldout:.2f}"), name


@pytest.mark.parametrize("num_steps", [20, 4, 50])
def test_load_entry_interpolates_other_step_counts(num_steps):
    artifact = load_entry("sd15/ays-10", num_steps)
    assert artifact.interpolated
    assert len(artifact.timesteps) == num_steps
    validate_timesteps(artifact.timesteps, 1000)
    assert artifact.timesteps[0] == 999 and artifact.timesteps[-1] == 24
    assert artifact.metrics == {}
    assert "log-linear interpolation" in artifact.method
    # the published entry itself is untouched and the 10-step request returns it as is
    assert load_entry("sd15/ays-10", 10).timesteps == SD15_AYS


def test_interpolation_is_log_linear_through_the_published_points():
    # 19 = 2·10 - 1 steps put every other point exactly on the published list
    assert load_entry("sd15/ays-10", 19).timesteps[::2] == SD15_AYS
    assert load_entry("sd15/ays-10", 20).timesteps == [  # golden
        999, 925, 857, 800, 747, 701, 659, 612, 565, 520, 477, 429, 375, 323, 269, 218, 162, 114, 53, 24]
    # one step keeps a single valid timestep (the low end, like diffusers' linspace spacing for N=1)
    assert len(interpolate(load_entry("sd15/ays-10"), 1).timesteps) == 1
    with pytest.raises(ValueError, match=r"^num_steps: 0 is outside \[1, 1000\]"):
        interpolate(load_entry("sd15/ays-10"), 0)


def test_unknown_or_malformed_entries_are_refused_with_the_known_list():
    with pytest.raises(ValueError, match=r"^policy: 'sd15/nope-10' is a catalogue entry that does not exist") as caught:
        load_entry("sd15/nope-10")
    assert "sd15/ays-10" in str(caught.value) and "sdxl/ays-10" in str(caught.value)
    with pytest.raises(ValueError, match=r"^policy: 'ays' is not a catalogue name of the form <model>/<family>-<N>"):
        load_entry("ays")


def test_load_entry_prefers_a_sibling_of_the_requested_length(tmp_path):
    for steps, timesteps in ((10, SD15_AYS), (3, [999, 500, 7])):
        make_artifact(timesteps=timesteps, method=f"m{steps}").save(tmp_path / "m" / f"fam-{steps}.json")
    assert list_entries(tmp_path) == ["m/fam-10", "m/fam-3"]
    assert load_entry("m/fam-10", 3, root=tmp_path).timesteps == [999, 500, 7]
    assert load_entry("m/fam-10", 5, root=tmp_path).interpolated


# ---------------------------------------------------------------- CatalogueEntry / FromFile policies


SD = NoiseSchedule.from_config(SD_SPEC)


def test_learned_policy_resolves_catalogue_entries():
    policy = make_policy("learned:sd15/ays-10")
    assert policy == CatalogueEntry("sd15/ays-10")
    assert policy.timesteps(None, SD).tolist() == SD15_AYS
    assert policy.timesteps(10, SD).tolist() == SD15_AYS
    twenty = policy.timesteps(20, SD)
    assert len(twenty) == 20 and twenty.dtype == torch.int64
    with pytest.raises(ValueError, match=r"^policy: 'sd15/nope-10' is a catalogue entry that does not exist"):
        make_policy("learned:sd15/nope-10").timesteps(None, SD)


def test_learned_policy_refuses_a_model_with_other_training_timesteps():
    with pytest.raises(ValueError, match=r"^policy: 'sd15/ays-10' is a catalogue entry made for "
                                         r"num_train_timesteps=1000, the model has 500"):
        CatalogueEntry("sd15/ays-10").timesteps(None, NoiseSchedule.from_config({"num_train_timesteps": 500}))


def test_from_file_policy(tmp_path):
    path = tmp_path / "mine.json"
    make_artifact().save(path)
    policy = make_policy(f"file:{path}")
    assert policy == FromFile(path)
    assert policy.timesteps(None, SD).tolist() == [999, 700, 400, 100, 0]
    eight = policy.timesteps(8, SD)
    assert len(eight) == 8 and int(eight[0]) == 999 and int(eight[-1]) == 0
    with pytest.raises(ValueError, match=r"^policy: '.*mine\.json' is a schedule file made for "
                                         r"num_train_timesteps=1000, the model has 500"):
        policy.timesteps(None, NoiseSchedule.from_config({"num_train_timesteps": 500}))
    with pytest.raises(ValueError, match=r"^policy: '.*missing\.json' is a schedule file that does not exist"):
        FromFile(tmp_path / "missing.json").timesteps(None, SD)


# ---------------------------------------------------------------- provenance: conditions, model, interpolation


def test_a_file_records_its_conditions_and_one_from_before_them_still_loads(tmp_path):
    conditions = ConditionsRecord(prompts_sha256=ConditionsRecord.prompts_digest(["a cat", "a car"]),
                                  prompts_file="prompts.txt", negative_prompt="blurry", guidance_scale=3.0)
    path = tmp_path / "t2i.json"
    make_artifact(conditions=conditions).save(path)
    assert ScheduleArtifact.load(path).conditions == conditions
    old = json.loads(path.read_text())
    del old["conditions"]
    path.write_text(json.dumps(old))
    assert ScheduleArtifact.load(path).conditions is None


def _model(weights: str = "ab" * 32, **scheduler) -> SimpleNamespace:
    """What check_model reads of a LoadedModel."""
    return SimpleNamespace(name="mine", weights_sha256=weights, scheduler_config={**SD_SPEC, **scheduler})


def test_a_file_made_for_another_model_is_refused_naming_both_unless_allowed(tmp_path):
    path = tmp_path / "tiny.json"
    make_artifact().save(path)
    policy = FromFile(path)
    assert check_model(policy, _model()) is None
    assert check_model(make_policy("uniform"), _model("cd" * 32)) is None
    with pytest.raises(ValueError) as caught:
        check_model(policy, _model("cd" * 32))
    assert str(caught.value) == (f"policy: 'file:{path}' was made for model 'tiny' (weights SHA-256 abababababab…); "
                                 "this run samples 'mine' (weights SHA-256 cdcdcdcdcdcd…); a schedule tuned for one "
                                 "model is not one for another: pass --allow-other-model to run it anyway")
    warning = check_model(policy, _model("cd" * 32), allow_other_model=True)
    assert warning is not None and warning.startswith(f"warning: --policy file:{path} was made for model 'tiny'")
    # a file without a weights hash is compared by its noise schedule; one that records neither, not at all
    make_artifact(model=ModelIdentity(name="tiny")).save(path)
    with pytest.raises(ValueError, match=r"\(beta_end 0\.012\); this run samples 'mine' \(beta_end 0\.02\)"):
        check_model(FromFile(path), _model("cd" * 32, beta_end=0.02))  # a new policy: one reads its file once
    make_artifact(model=ModelIdentity(name="tiny"), noise_schedule=None).save(path)
    assert check_model(FromFile(path), _model("cd" * 32, beta_end=0.02)) is None


def test_noise_schedule_mismatch_compares_what_both_sides_describe():
    artifact = make_artifact()
    assert noise_schedule_mismatch(artifact, SD_SPEC) == {}
    assert noise_schedule_mismatch(artifact, {**SD_SPEC, "beta_end": 0.02, "rescale_betas_zero_snr": True}) == {
        "beta_end": (0.012, 0.02), "rescale_betas_zero_snr": (False, True)}
    assert noise_schedule_mismatch(artifact, {**SD_SPEC, "prediction_type": "v_prediction"}) == {}  # not β keys
    # a config the spec cannot describe (a β key missing, trained betas) or an artifact without one: not compared
    assert noise_schedule_mismatch(artifact, {k: v for k, v in SD_SPEC.items() if k != "beta_start"}) == {}
    assert noise_schedule_mismatch(artifact, {**SD_SPEC, "beta_end": 0.02, "trained_betas": [0.1] * 1000}) == {}
    assert noise_schedule_mismatch(make_artifact(noise_schedule=None), {**SD_SPEC, "beta_end": 0.02}) == {}


def test_a_catalogue_entry_that_records_a_hash_is_refused_on_another_model():
    with pytest.raises(ValueError, match=r"^policy: 'learned:fashion-mnist/ddim-6' was made for model "
                                         r"'fashion-mnist' \(weights SHA-256 f975575279ed…\)"):
        check_model(CatalogueEntry("fashion-mnist/ddim-6"), _model(beta_schedule="linear"))
    assert check_model(CatalogueEntry("sd15/ays-10"), _model("cd" * 32)) is None  # records no hash; same β


def test_interpolated_from_names_the_length_a_list_was_stretched_from(tmp_path):
    path = tmp_path / "five.json"
    make_artifact().save(path)
    assert interpolated_from(FromFile(path), 8) == 5
    assert interpolated_from(FromFile(path), 5) is None and interpolated_from(FromFile(path), None) is None
    assert interpolated_from(CatalogueEntry("fashion-mnist/ddim-6"), 7) == 6
    assert interpolated_from(CatalogueEntry("fashion-mnist/ddim-6"), 8) is None  # its sibling ddim-8, as it is
    assert interpolated_from(make_policy("uniform"), 8) is None


def test_a_policy_object_reads_its_schedule_file_once(tmp_path, monkeypatch):
    """A run asks the policy for its artifact in check_solver, check_model, interpolated_from and timesteps."""
    path = tmp_path / "five.json"
    make_artifact().save(path)
    reads, read = [], ScheduleArtifact.read
    monkeypatch.setattr(ScheduleArtifact, "read", lambda *args, **kwargs: reads.append(args) or read(*args, **kwargs))
    policy = FromFile(path)
    check_solver(policy, "ddim")
    assert check_model(policy, _model()) is None and interpolated_from(policy, 8) == 5
    assert len(policy.timesteps(8, SD)) == 8 and len(reads) == 1
