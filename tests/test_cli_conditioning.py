"""The command line on every kind of model (issue 11): sample, eval and tune on a tiny Stable Diffusion folder with
prompts, a class-conditional UNet and a 3×48×48 pixel UNet; the conditioning flags' errors name the flag, the
value and the rule before any network call; and a list exported by `tune` runs in diffusers'
StableDiffusionPipeline through the drop-in scheduler with the images of the project's own sampler."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from adaptive_sampler.schedules.artifact import ConditionsRecord, ScheduleArtifact
from adaptive_sampler.tuning.storage import open_storage
from helpers import run_cli, stable_diffusion_images

PROMPTS = ["a photo of cat", "a red car", "", "a photo of cat"]  # the blank line is skipped: 3 prompts


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def ok(*args: object):
    run = run_cli(*args, "--device", "cpu")
    assert run.code == 0, run.err
    return run


def test_sample_a_stable_diffusion_folder_with_prompts(tiny_sd_dir, prompts_file, tmp_path):
    images, latents, report = tmp_path / "images.npy", tmp_path / "latents.npy", tmp_path / "report.json"
    ok("sample", "--model", tiny_sd_dir, "--prompts", prompts_file, "--negative-prompt", "a dog", "--steps", 4,
       "--n", 5, "--batch-size", 2, "--save", images, "--save-latents", latents, "--json", report,
       "--out", tmp_path / "grid.png")
    assert np.load(images).shape == (5, 3, 16, 16) and np.load(latents).shape == (5, 4, 8, 8)
    assert np.abs(np.load(images)).max() <= 1
    data = json.loads(report.read_text())
    assert data["prompts"] == ["a photo of cat", "a red car", "a photo of cat", "a photo of cat", "a red car"]
    assert data["guidance_scale"] == 7.5 and data["negative_prompt"] == "a dog"
    assert data["latent_shape"] == [4, 8, 8] and data["image_shape"] == [3, 16, 16] and data["decode_s"] >= 0


def test_samples_with_prompts_do_not_depend_on_the_batch_size(tiny_sd_dir, prompts_file, tmp_path):
    for batch in (5, 2):
        ok("sample", "--model", tiny_sd_dir, "--prompts", prompts_file, "--steps", 3, "--n", 5, "--batch-size",
           batch, "--save", tmp_path / f"b{batch}.npy")
    assert np.array_equal(np.load(tmp_path / "b5.npy"), np.load(tmp_path / "b2.npy"))


def test_sample_a_class_conditional_unet(tiny_class_dir, tmp_path):
    ok("sample", "--model", tiny_class_dir, "--class-labels", "3,7", "--steps", 3, "--n", 3, "--json",
       tmp_path / "labels.json", "--save", tmp_path / "s.npy")
    assert json.loads((tmp_path / "labels.json").read_text())["labels"] == [3, 7, 3]
    ok("sample", "--model", tiny_class_dir, "--steps", 3, "--n", 12, "--json", tmp_path / "all.json")
    assert json.loads((tmp_path / "all.json").read_text())["labels"] == [*range(10), 0, 1]  # --classes all


def test_sample_a_3x48x48_pixel_unet(tiny_rgb_dir, tmp_path):
    ok("sample", "--model", tiny_rgb_dir, "--steps", 3, "--n", 2, "--save", tmp_path / "s.npy")
    assert np.load(tmp_path / "s.npy").shape == (2, 3, 48, 48)


def test_an_image_space_monitor_reports_its_decode_cost(tiny_sd_dir, tmp_path):
    report = tmp_path / "r.json"
    ok("sample", "--model", tiny_sd_dir, "--prompt", "a cat", "--steps", 6, "--n", 3, "--json", report,
       "--monitor", "x0-l2:1e9,space=image,min_steps=3", "--finish", "x0")
    data = json.loads(report.read_text())
    assert data["stopped_by"] == ["x0-l2:1000000000.0,min_steps=3,space=image"] * 3
    assert data["nfe_per_sample"] == [3, 3, 3]
    assert data["monitor_decoded_rows"] == 9 and data["monitor_decode_s"] > 0  # 3 rows decoded at each step


@pytest.mark.parametrize(("model", "flags"), [
    ("tiny_sd_dir", ("--prompt", "a red car")),
    ("tiny_rgb_dir", ()),
])
def test_eval_with_fidelity_on_latent_and_pixel_models(request, model, flags, tmp_path):
    report = tmp_path / "eval.json"
    ok("eval", "--model", request.getfixturevalue(model), *flags, "--features", "fidelity", "--steps", 3, "--n", 4,
       "--reference-steps", 10, "--json", report)
    data = json.loads(report.read_text())
    assert np.isfinite(data["psnr"]) and data["n"] == 4


def test_eval_label_agreement_on_a_class_conditional_unet(tiny_class_dir, tmp_path):
    report = tmp_path / "eval.json"
    ok("eval", "--model", tiny_class_dir, "--classes", "all", "--features", "label", "--steps", 3, "--n", 10,
       "--json", report)
    assert 0 <= json.loads(report.read_text())["label_agreement"] <= 1


def _tune(tmp_path: Path, model: Path, *flags: object) -> Path:
    export = tmp_path / "schedules"
    ok("tune", "--model", model, *flags, "--objective", "fidelity", "--steps", "3,4", "--trials", 2, "--n", 4,
       "--heldout-n", 4, "--reference-steps", 10, "--dp-grid", 6, "--dp-fine-steps", 10, "--dp-trajectories", 2,
       "--no-baselines", "--storage", tmp_path / "t.journal", "--cache-dir", tmp_path / "cache", "--export", export,
       "--plots", tmp_path / "plots")
    return export


def test_tune_a_stable_diffusion_folder_then_the_export_runs_in_stable_diffusion_pipeline(tiny_sd_dir, prompts_file,
                                                                                          tmp_path):
    export = _tune(tmp_path, tiny_sd_dir, "--prompts", prompts_file, "--guidance-scale", 7.5)
    artifact = ScheduleArtifact.load(export / tiny_sd_dir.name / "ddim-4.json")
    # the file records the conditions it was tuned under
    assert artifact.conditions == ConditionsRecord(prompts_sha256=ConditionsRecord.prompts_digest(
        [p for p in PROMPTS if p]), prompts_file="prompts.txt", negative_prompt=None, guidance_scale=7.5)
    # the default study name ends in a hash of them; another guidance under that name is one line, naming both
    names = optuna.get_all_study_names(open_storage(tmp_path / "t.journal"))
    assert names and all(re.fullmatch(rf"{tiny_sd_dir.name}-ddim-fidelity-free-c[0-9a-f]{{8}}:steps=[34]", n)
                         for n in names), names
    clash = run_cli("tune", "--model", tiny_sd_dir, "--prompts", prompts_file, "--guidance-scale", 3, "--steps", 4,
                    "--study-name", names[0].split(":")[0], "--objective", "fidelity", "--trials", 2, "--n", 4,
                    "--reference-steps", 10, "--storage", tmp_path / "t.journal", "--cache-dir", tmp_path / "cache",
                    "--device", "cpu")
    assert clash.code != 0 and len(clash.err.strip().splitlines()) == 1, clash.err
    assert "guidance_scale: stored 7.5, now 3.0" in clash.err and "tuning" not in clash.err, clash.err
    timesteps = artifact.to_diffusers_timesteps()
    assert len(timesteps) == 4
    # the project's sampler with the exported list, as `sample --policy file:` runs it
    images = tmp_path / "ours.npy"
    ok("sample", "--model", tiny_sd_dir, "--prompts", prompts_file, "--guidance-scale", 7.5, "--policy",
       f"file:{export / tiny_sd_dir.name / 'ddim-4.json'}", "--n", 3, "--save", images)
    prompts = [p for p in PROMPTS if p][:3]
    expected = stable_diffusion_images(tiny_sd_dir, timesteps, prompts, 7.5, None)
    torch.testing.assert_close(torch.from_numpy(np.load(images)), expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize(("model", "flags"), [("tiny_class_dir", ("--class-labels", "0,5")), ("tiny_rgb_dir", ())])
def test_tune_class_conditional_and_pixel_models(request, model, flags, tmp_path):
    folder = request.getfixturevalue(model)
    export = _tune(tmp_path, folder, *flags)
    assert {p.name for p in (export / folder.name).iterdir()} == {"ddim-3.json", "ddim-4.json"}


# ---------------------------------------------------------------- the flags' errors, before any network call
@pytest.mark.parametrize(("model", "flags", "line"), [
    ("tiny_sd_dir", (), "--prompt: None is missing: model"),
    ("tiny_sd_dir", ("--prompt", "a", "--guidance-scale", "0.5"), "--guidance-scale: 0.5 is not a finite number >= 1"),
    ("tiny_sd_dir", ("--prompt", "a", "--guidance-scale", "nan"), "--guidance-scale: nan is not a finite number"),
    ("tiny_sd_dir", ("--prompts", "missing.txt"), "--prompts: 'missing.txt' does not exist"),
    ("tiny_sd_dir", ("--prompts", "EMPTY"), "holds no prompt"),
    ("tiny_sd_dir", ("--prompts", "FIFO"), "is not a regular file (a FIFO, socket or device)"),
    ("tiny_sd_dir", ("--prompt", "a", "--prompts", "missing.txt"), "--prompts: 'missing.txt' is given together with"),
    ("tiny_sd_dir", ("--prompt", "a", "--height", "18"), "--height: 18 is not a positive multiple of 4"),
    ("tiny_sd_dir", ("--prompt", "a", "--class-labels", "1"), "--class-labels: '1' is given together with a prompt"),
    ("tiny_sd_dir", ("--prompt", "a", "--monitor", "max-nfe:3,space=image"), "--monitor: 'max-nfe:3,space=image'"),
    ("tiny_sd_dir", ("--prompt", "a", "--monitor", "x0-l2:1,space=pixel"), "space = 'pixel', which is not one of"),
    ("tiny_class_dir", ("--prompt", "a cat"), "--prompt: 'a cat' is given, but model"),
    ("tiny_class_dir", ("--class-labels", "0,10"), "--class-labels: '0,10' holds 10, outside [0, 9]"),
    ("tiny_class_dir", ("--class-labels", "0,x"), "--class-labels: '0,x' is not a comma-separated list of integers"),
    ("tiny_class_dir", ("--classes", "some"), "--classes: 'some' is not 'all'"),
    ("tiny_class_dir", ("--guidance-scale", "3"), "--guidance-scale: 3.0 needs an unconditional branch"),
    ("tiny_sd_dir", ("--prompt", "a", "--guidance-interval", "700"), "--guidance-interval: '700' is not two numbers"),
    ("tiny_sd_dir", ("--prompt", "a", "--guidance-interval", "200:700"), "--guidance-interval: '200:700' has HIGH <= "),
    ("tiny_sd_dir", ("--prompt", "a", "--guidance-interval", "1200:200"), "'1200:200' is outside [0, 999] (the"),
    ("tiny_sd_dir", ("--prompt", "a", "--guidance-scale", "1", "--guidance-interval", "700:200"),
     "--guidance-interval: '700:200' has no effect without guidance"),
    ("tiny_class_dir", ("--guidance-interval", "700:200"), "has no null class, so guidance is out of scope there"),
    ("tiny_rgb_dir", ("--guidance-interval", "700:0"), "--guidance-interval: '700:0' needs classifier-free guidance"),
    ("tiny_rgb_dir", ("--class-labels", "1"), "--class-labels: '1' is given, but model"),
    ("tiny_rgb_dir", ("--negative-prompt", "x"), "--negative-prompt: 'x' has no effect without guidance"),
    ("tiny_rgb_dir", ("--save-latents", "OUT"), "--save-latents: "),
])
def test_bad_conditioning_flags_name_the_flag_the_value_and_the_rule(request, tmp_path, model, flags, line):
    (tmp_path / "empty.txt").write_text("\n\n")
    os.mkfifo(tmp_path / "fifo")  # reading it would wait for a writer forever
    files = {"EMPTY": tmp_path / "empty.txt", "FIFO": tmp_path / "fifo", "OUT": tmp_path / "l.npy"}
    flags = tuple(str(files[f]) if f in files else f for f in flags)
    commands = ("sample",) if "--save-latents" in flags else ("sample", "eval") if "--monitor" in flags else (
        "sample", "eval", "tune")
    for command in commands:
        extra = ("--storage", tmp_path / "t.journal", "--cache-dir", tmp_path / "c") if command == "tune" else ()
        run = run_cli(command, "--model", request.getfixturevalue(model), *flags, "--steps", 2, "--n", 1,
                      "--device", "cpu", *extra)
        assert run.code == 2, (command, run.err)
        assert line in run.err_lines[-1], (command, run.err_lines[-1])
        assert "sampling:" not in run.err and "tuning:" not in run.err  # refused before any network call
    assert not (tmp_path / "l.npy").exists()


def test_embedded_t2i_is_a_model_name(tmp_path):
    from adaptive_sampler.models import embedded_t2i_dir

    if embedded_t2i_dir().is_dir():
        ok("sample", "--model", "embedded-t2i", "--prompt", "a shoe", "--steps", 3, "--n", 2, "--json",
           tmp_path / "r.json")
        assert json.loads((tmp_path / "r.json").read_text())["guidance_scale"] == 3.0  # its recommended guidance
        return
    run = run_cli("sample", "--model", "embedded-t2i", "--prompt", "a shoe", "--steps", 3, "--n", 1)
    assert run.code == 2 and run.err_lines[-1].startswith("error: --model: 'embedded-t2i' is not installed here")
