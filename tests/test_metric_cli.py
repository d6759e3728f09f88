"""`adaptive-sampler stats` (pytorch-fid's npz layout) and `eval --features/--reference`, end to end on tiny models:
the CLIP folder is a tiny random CLIPModel with a tiny tokenizer made in the test (metric_weights.py), the UNet the
tiny random one of the `tiny_model_dir` fixture; the embedded back-end uses the shipped weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from metric_weights import write_tiny_clip_dir
from PIL import Image
from safetensors.torch import load_file

from adaptive_sampler.datasets import to_model_range
from adaptive_sampler.metrics import FeatureStatistics, ScoringBatch, make_backend
from adaptive_sampler.metrics.statistics import EMBEDDED_DIR
from helpers import run_cli


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_tiny_clip_dir(tmp_path_factory.mktemp("clip"), projection_dim=4)


def _write_pngs(folder, n: int, size: int = 8, mode: str = "L") -> torch.Tensor:
    """n random 8-bit images as PNG files; returns them in [-1, 1] [n, C, size, size]."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    channels = 1 if mode == "L" else 3
    values = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    for i, v in enumerate(values):
        Image.fromarray(v[:, :, 0] if mode == "L" else v, mode=mode).save(folder / f"{i:03d}.png")
    return torch.from_numpy(values).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_stats_from_an_image_folder_is_readable_as_pytorch_fid_reads_it(tmp_path, clip_dir):
    images = _write_pngs(tmp_path / "real", 12)
    out = tmp_path / "ref.npz"
    run = run_cli("stats", "--images", tmp_path / "real", "--features", f"clip:{clip_dir}", "--out", out,
                  "--batch-size", "5", "--device", "cpu")
    assert run.code == 0, run.err
    assert "mu [4], sigma [4, 4] of 12 images (1, 8, 8)" in run.out
    with np.load(out) as f:  # pytorch-fid: f["mu"][:], f["sigma"][:]
        assert sorted(f.files) == ["mu", "sigma"]
        mu, sigma = f["mu"][:], f["sigma"][:]
    features = make_backend(f"clip:{clip_dir}").feature_extractor(images).double().numpy()
    np.testing.assert_allclose(mu, features.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-4, atol=1e-6)


def test_stats_from_a_npy_array_with_the_embedded_features(tmp_path):
    bundled = load_file(EMBEDDED_DIR / "real_test_images.safetensors")
    images = to_model_range(bundled["images"].numpy())
    images = torch.cat([images.roll(s, dims=-1) for s in range(-3, 4)])  # 140 images: more than 128
    np.save(tmp_path / "real.npy", images.numpy())
    run = run_cli("stats", "--npy", tmp_path / "real.npy", "--out", tmp_path / "ref.npz", "--device", "cpu")
    assert run.code == 0, run.err
    loaded = FeatureStatistics.load_npz(tmp_path / "ref.npz")
    expected = FeatureStatistics.from_features(make_backend("embedded").feature_extractor(images))
    torch.testing.assert_close(loaded.mean, expected.mean)
    torch.testing.assert_close(loaded.cov, expected.cov)
    uint8 = np.round((images.numpy() + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)  # [n, H, W, C]
    np.save(tmp_path / "real8.npy", uint8)
    assert run_cli("stats", "--npy", tmp_path / "real8.npy", "--out", tmp_path / "ref8.npz").code == 0
    torch.testing.assert_close(FeatureStatistics.load_npz(tmp_path / "ref8.npz").mean, expected.mean, rtol=1e-5,
                               atol=1e-5)  # v / 127.5 - 1 against datasets.to_model_range: float32 rounding


@pytest.mark.parametrize(("args", "message"), [
    ((), "error: --images, --npy: give exactly one of them"),
    (("--images", "{tmp}/real", "--npy", "{tmp}/x.npy"), "error: --images, --npy: give exactly one of them"),
    (("--images", "{tmp}/nowhere"), "error: --images: '{tmp}/nowhere' is not a folder of images"),
    (("--npy", "{tmp}/x.npy"), "error: --npy: '{tmp}/x.npy' does not exist"),
    (("--images", "{tmp}/real", "--features", "fidelity"), "error: --features: 'fidelity' has no feature space"),
    (("--images", "{tmp}/real", "--features", "inception"), "error: --features: 'inception' is not a metric back-end"),
    (("--images", "{tmp}/real", "--out", "{tmp}/ref.txt"), "error: --out: '{tmp}/ref.txt' must end in .npz"),
    (("--images", "{tmp}/real32"), "error: --images: 12 samples is not more than the feature dimension 128 of "
                                   "'embedded'"),
    (("--images", "{tmp}/real"), "error: --features: 'embedded' scores with the embedded Fashion-MNIST classifier, "
                                 "which takes (1, 32, 32); these samples are (1, 8, 8)"),
    (("--images", "{tmp}/real", "--features", "clip:{clip}", "--out", "{tmp}/no/ref.npz"),
     "error: --out: '{tmp}/no/ref.npz' is in the folder"),
])
def test_stats_errors_name_the_flag(tmp_path, clip_dir, args, message):
    _write_pngs(tmp_path / "real", 12)
    _write_pngs(tmp_path / "real32", 12, size=32)
    filled = [a.format(tmp=tmp_path, clip=clip_dir) for a in args]
    if "--out" not in filled:
        filled += ["--out", str(tmp_path / "ref.npz")]
    run = run_cli("stats", *filled)
    assert run.code == 2
    assert run.err_lines[0].startswith(message.format(tmp=tmp_path)), run.err
    assert not (tmp_path / "ref.npz").exists()


@pytest.fixture(scope="module")
def clip_reference(tmp_path_factory, clip_dir):
    folder = tmp_path_factory.mktemp("ref")
    _write_pngs(folder / "real", 10)
    assert run_cli("stats", "--images", folder / "real", "--features", f"clip:{clip_dir}",
                   "--out", folder / "ref.npz").code == 0
    return folder / "ref.npz"


def test_eval_with_clip_features_and_a_reference(tmp_path, tiny_model_dir, clip_dir, clip_reference):
    run = run_cli("eval", "--model", tiny_model_dir, "--steps", "3", "--n", "6", "--batch-size", "4",
                  "--features", f"clip:{clip_dir}", "--reference", clip_reference, "--json", tmp_path / "r.json",
                  "--device", "cpu")
    assert run.code == 0, run.err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["features"] == f"clip:{clip_dir}" and report["reference"] == str(clip_reference)
    assert report["n"] == 6 and report["fid"] > 0 and "kid" not in report  # an npz holds no features
    assert len(report["timesteps"]) == 3
    assert "FID" in run.out


def test_eval_with_fidelity_to_a_many_step_reference(tmp_path, tiny_model_dir):
    args = ("eval", "--model", tiny_model_dir, "--n", "4", "--features", "fidelity", "--reference-steps", "12",
            "--device", "cpu")
    few = run_cli(*args, "--steps", "3", "--json", tmp_path / "few.json")
    same = run_cli(*args, "--steps", "12", "--json", tmp_path / "same.json")
    assert few.code == 0 and same.code == 0, few.err + same.err
    few_psnr = json.loads((tmp_path / "few.json").read_text())["psnr"]
    same_report = json.loads((tmp_path / "same.json").read_text())
    assert same_report["psnr"] == pytest.approx(80.0)  # the reference itself: piq's 1e-8 MSE floor
    assert few_psnr < 80.0 and same_report["reference_steps"] == 12 and "ssim" not in same_report  # 8x8 < 11


@pytest.mark.parametrize(("args", "message"), [
    (("--features", "nope"), "error: --features: 'nope' is not a metric back-end"),
    (("--reference", "{tmp}/missing.npz"), "error: --reference: '{tmp}/missing.npz' does not exist"),
    (("--reference", "{tmp}/bad.npz"), "error: --reference: '{tmp}/bad.npz' holds the arrays ['m', 's']"),
    (("--features", "clip:{clip}", "--reference", "{ref}", "--n", "4"),
     "error: --n: 4 samples is not more than the feature dimension 4 of 'clip:"),
    (("--features", "clip:{clip}", "--reference", "{ref}", "--bootstrap", "5"), "error: --bootstrap: 5 needs the "
                                                                               "reference's features"),
    (("--features", "label"), "error: --features: 'label' scores with the embedded Fashion-MNIST classifier"),
    (("--features", "fidelity", "--reference-steps", "1"), "error: --reference-steps: 1 is outside [2, 1000]"),
    (("--features", "inception:{tmp}/none.pth"), "error: --features: 'inception:{tmp}/none.pth' names"),
])
def test_eval_metric_errors_name_the_flag_before_sampling(tmp_path, tiny_model_dir, clip_dir, clip_reference, args,
                                                          message):
    np.savez(tmp_path / "bad.npz", m=np.zeros(4), s=np.eye(4))
    filled = [a.format(tmp=tmp_path, clip=clip_dir, ref=clip_reference) for a in args]
    run = run_cli("eval", "--model", tiny_model_dir, "--steps", "2", "--n", "6", "--device", "cpu", *filled)
    assert run.code == 2
    assert run.err_lines[0].startswith(message.format(tmp=tmp_path, clip=clip_dir)), run.err
    assert "sampling" not in run.err  # refused before the first batch


def test_eval_label_agreement_on_a_class_conditional_model(tmp_path):
    """A tiny random class-conditional 1x32x32 UNet (built in the test) and the shipped classifier: the reported
    agreement is the classifier's on the saved images with the labels sample i took (i mod 10)."""
    from helpers import write_tiny_class_unet_dir

    model = write_tiny_class_unet_dir(tmp_path / "class-unet")
    run = run_cli("eval", "--model", model, "--features", "label", "--classes", "all", "--n", "12", "--steps", "2",
                  "--save", tmp_path / "s.npy", "--json", tmp_path / "r.json", "--device", "cpu")
    assert run.code == 0, run.err
    report = json.loads((tmp_path / "r.json").read_text())
    images = torch.from_numpy(np.load(tmp_path / "s.npy"))
    agreement = make_backend("label").per_sample(ScoringBatch(images, labels=[i % 10 for i in range(12)]))
    assert report["label_agreement"] == pytest.approx(float(agreement["label_agreement"].mean()))
    refused = run_cli("eval", "--model", tmp_path / "class-unet", "--features", "label", "--n", "4", "--steps", "2",
                      "--features", "clip:nowhere", "--device", "cpu")
    assert refused.code == 2 and refused.err_lines[-1].startswith("error: --features: 'clip:nowhere' names")


def test_eval_clip_score_of_a_text_to_image_model_against_its_prompt(tmp_path, clip_dir):
    """A tiny random Stable Diffusion folder (tests/helpers.py) and the tiny CLIP: the reported CLIP score is the
    back-end's on the saved decoded images and the prompt each sample took."""
    from helpers import write_tiny_sd_dir

    model = write_tiny_sd_dir(tmp_path / "sd")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a shirt\na bag\n")
    run = run_cli("eval", "--model", model, "--prompts", prompts, "--features", f"clip:{clip_dir}", "--n", "3",
                  "--steps", "2", "--save", tmp_path / "s.npy", "--json", tmp_path / "r.json", "--device", "cpu")
    assert run.code == 0, run.err
    report = json.loads((tmp_path / "r.json").read_text())
    images = torch.from_numpy(np.load(tmp_path / "s.npy"))
    assert images.shape == (3, 3, 16, 16)
    expected = make_backend(f"clip:{clip_dir}").clip.clip_score(images, ["a photo of a shirt", "a bag",
                                                                        "a photo of a shirt"])
    assert report["clip_score"] == pytest.approx(float(expected.double().mean()), rel=1e-5, abs=1e-6)
    assert "fid" not in report and report["reference"] is None
