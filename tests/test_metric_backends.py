"""Metric back-ends (embedded, inception:PATH, clip:PATH, fidelity, label), clean-fid's preprocessing, pytorch-fid's
npz reference layout and the accumulator that tuning and eval share. Weights are the shipped ones (embedded, label)
or random ones in the real files' formats, made in the test (see metric_weights.py and each test's docstring)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metric_weights import write_random_fid_inception, write_tiny_clip_dir
from PIL import Image
from safetensors.torch import load_file
from torchvision.models import inception_v3

from adaptive_sampler.datasets import to_model_range
from adaptive_sampler.errors import FieldError
from adaptive_sampler.metrics import (
    EmbeddedBackend,
    FeatureStatistics,
    MetricAccumulator,
    ScoringBatch,
    build_fid_inception_v3,
    clean_preprocess,
    clean_resize,
    embedded_reference,
    fid,
    fidelity,
    fidelity_per_sample,
    make_backend,
    quantize_uint8,
    resolve_reference,
    score_images,
)
from adaptive_sampler.metrics.evaluation import score_samples
from adaptive_sampler.metrics.statistics import EMBEDDED_DIR
from adaptive_sampler.monitors.distances import LPIPS
from adaptive_sampler.monitors.lpips_distance import build_lpips


def _bundled() -> tuple[torch.Tensor, torch.Tensor]:
    bundled = load_file(EMBEDDED_DIR / "real_test_images.safetensors")
    return to_model_range(bundled["images"].numpy()), bundled["labels"].long()


def _images(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --- clean-fid's convention -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(28, 28), (48, 40), (8, 8), (320, 300)])
def test_clean_resize_matches_pil_bicubic_on_float_channels(size):
    """clean-fid's "clean" resize is PIL's bicubic on each channel as a float image (mode F), clipped to 0-255."""
    values = quantize_uint8(_images(2, 3, *size))
    ours = clean_resize(values, (299, 299))
    for i in range(2):
        for c in range(3):
            pil = Image.fromarray(values[i, c].numpy().astype(np.float32), mode="F").resize((299, 299), Image.BICUBIC)
            expected = np.asarray(pil).clip(0, 255)
            np.testing.assert_allclose(ours[i, c].numpy(), expected, atol=2e-3)


def test_quantisation_is_that_of_an_8_bit_png_and_grayscale_becomes_rgb():
    levels = torch.arange(256.0)
    images = (levels / 127.5 - 1).reshape(1, 1, 16, 16)  # what reading an 8-bit PNG into [-1, 1] gives
    assert torch.equal(quantize_uint8(images), levels.reshape(1, 1, 16, 16))
    assert torch.equal(quantize_uint8(torch.tensor([-1.5, -1.0, 0.0, 0.001, 1.0, 2.0])),
                       torch.tensor([0.0, 0.0, 128.0, 128.0, 255.0, 255.0]))
    rgb = clean_preprocess(images, (16, 16))
    assert rgb.shape == (1, 3, 16, 16) and torch.equal(rgb[:, 0], rgb[:, 2])
    with pytest.raises(FieldError, match=r"^images: \(1, 2, 16, 16\) is its shape"):
        clean_preprocess(torch.zeros(1, 2, 16, 16), (299, 299))


# --- inception:PATH -------------------------------------------------------------------------------------------------
def test_inception_backend_from_a_pytorch_fid_state_dict_file(tmp_path):
    """The weights are a random-valued FID InceptionV3 state dict saved to a file with pytorch-fid's key names (not
    the real weights): the features must be the network's pool features of clean-fid's input, computed here by
    hand with PIL."""
    expected_keys = set(inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
                        .state_dict())
    assert set(build_fid_inception_v3().state_dict()) == expected_keys  # pytorch-fid builds it the same way
    path = write_random_fid_inception(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    backend = make_backend(f"inception:{path}")
    assert backend.dim == 2048 and backend.spec == f"inception:{path}"
    backend.check_shape((3, 48, 40))
    images = _images(2, 1, 28, 28, seed=1)
    features = backend.feature_extractor(images)
    assert features.shape == (2, 2048) and torch.isfinite(features).all()

    net = build_fid_inception_v3()
    net.load_state_dict(torch.load(path, weights_only=True))
    net.fc = torch.nn.Identity()
    by_hand = []
    for image in images:
        png = np.round((image[0].numpy() + 1) * 127.5).astype(np.float32)  # 8-bit grey values
        channel = np.asarray(Image.fromarray(png, mode="F").resize((299, 299), Image.BICUBIC)).clip(0, 255)
        by_hand.append(torch.from_numpy(np.stack([channel] * 3)) / 255 * 2 - 1)  # pytorch-fid's input scaling
    with torch.inference_mode():
        expected = net.eval()(torch.stack(by_hand).float())
    torch.testing.assert_close(features, expected, rtol=1e-3, atol=1e-3)


def test_inception_backend_errors_name_features(tmp_path):
    missing = tmp_path / "pt_inception.pth"
    with pytest.raises(FieldError, match=r"^features: 'inception:.*pt_inception.pth' names .* which does not exist.*"
                                         r"pytorch-fid/releases"):
        make_backend(f"inception:{missing}")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(FieldError, match=r"^features: 'inception:.*other.pth' is not a state dict of the FID "):
        make_backend(f"inception:{tmp_path / 'other.pth'}")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(FieldError, match=r"^features: 'inception:.*junk.pth' could not be read as a state dict"):
        make_backend(f"inception:{tmp_path / 'junk.pth'}")


@pytest.mark.parametrize("spec", ["inception", "clip", "fidelity:ssim", "lpips", "Embedded", "embedded:x", ""])
def test_unknown_backend_names_features(spec):
    with pytest.raises(FieldError, match=r"^features: .* is not a metric back-end; use one of embedded, heldout, "
                                         r"inception:PATH, clip:PATH"):
        make_backend(spec)


# --- clip:PATH ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_tiny_clip_dir(tmp_path_factory.mktemp("clip"))


def test_clip_score_is_100_times_the_positive_cosine_of_clip_model_embeddings(clip_dir):
    """A tiny random CLIPModel built from a CLIPConfig, saved with save_pretrained with a tiny BPE tokenizer made
    in the test: the score must be 100 · max(cos, 0) of transformers' own CLIPModel forward (logits_per_image /
    logit_scale), on the folder's processor output of the 8-bit images."""
    from transformers import CLIPModel, CLIPProcessor

    backend = make_backend(f"clip:{clip_dir}")
    assert backend.dim == 4 and backend.metric_names == ("clip_score",)
    images = _images(6, 3, 40, 36, seed=2)
    prompts = ["a photo of a shirt", "a shoe", "a bag", "a dress", "photo of a shoe", "a shirt"]
    scores = backend.per_sample(ScoringBatch(images, prompts=prompts))["clip_score"]

    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    pngs = [np.round((x.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8) for x in images]
    inputs = processor(text=prompts, images=pngs, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
        cosine = out.logits_per_image.diagonal() / model.logit_scale.exp()
        projected = model.visual_projection(model.vision_model(pixel_values=inputs["pixel_values"]).pooler_output)
    expected = (100 * cosine.clamp(min=0)).double()
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)
    assert (expected > 0).any() and (cosine < 0).any()  # both sides of the clamp are exercised
    features = backend.feature_extractor(images)
    torch.testing.assert_close(features, projected, rtol=1e-4, atol=1e-4)  # unnormalised, as clean-fid's CLIP
    gray = backend.feature_extractor(images[:, :1])
    torch.testing.assert_close(gray, backend.feature_extractor(images[:, :1].expand(-1, 3, -1, -1)))
    assert backend.per_sample(ScoringBatch(images)) == {}  # no prompts, no CLIP score


def test_clip_backend_errors_name_features(tmp_path, clip_dir):
    with pytest.raises(FieldError, match=r"^features: 'clip:.*nowhere' names .* which is not a folder"):
        make_backend(f"clip:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FieldError, match=r"^features: 'clip:.*empty' lacks config.json, preprocessor_config.json "
                                         r"\(or processor_config.json\), model.safetensors"):
        make_backend(f"clip:{tmp_path / 'empty'}")
    backend = make_backend(f"clip:{clip_dir}")
    with pytest.raises(FieldError, match=r"^prompts: 2 entries were given for 3 images"):
        ScoringBatch(_images(3, 3, 8, 8), prompts=["a", "b"])
    with pytest.raises(FieldError, match=r"^features: 'clip:.*' takes grayscale or RGB images"):
        backend.check_shape((4, 8, 8))


# --- fidelity, label, embedded --------------------------------------------------------------------------------------
def test_fidelity_backend_per_sample_means_equal_fidelity():
    images, _ = _bundled()
    noisy = (images + 0.2 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    backend = make_backend("fidelity")
    accumulator = MetricAccumulator(backend)
    accumulator.add(ScoringBatch(noisy[:7], reference_images=images[:7]))
    accumulator.add(ScoringBatch(noisy[7:], reference_images=images[7:]))
    values = accumulator.values()
    expected = fidelity(noisy, images)
    assert values["psnr"] == pytest.approx(expected.psnr, rel=1e-6)
    assert values["ssim"] == pytest.approx(expected.ssim, rel=1e-6)
    assert set(values) == {"psnr", "ssim"} and accumulator.n == 20
    small = fidelity_per_sample(_images(3, 3, 8, 8), _images(3, 3, 8, 8, seed=1))
    assert set(small) == {"psnr"}  # SSIM's 11-pixel window does not fit
    with pytest.raises(FieldError, match=r"^features: 'fidelity' scores against the many-step reference"):
        backend.per_sample(ScoringBatch(images))


def test_fidelity_lpips_per_sample_equals_the_lpips_distance():
    """LPIPS here has a random backbone (build_lpips(random_backbone=True): the torchvision weights cannot be
    downloaded); it checks that the per-sample values are lpips' distance of the same image pairs."""
    model = build_lpips("alex", random_backbone=True)
    x, y = _images(4, 3, 32, 32, seed=3), _images(4, 3, 32, 32, seed=4)
    ours = fidelity_per_sample(x, y, model)["lpips"]
    distance = LPIPS("alex", random_backbone=True)
    torch.testing.assert_close(ours, distance(x, y).double(), rtol=1e-5, atol=1e-6)
    gray = fidelity_per_sample(x[:, :1], y[:, :1], model)["lpips"]
    torch.testing.assert_close(gray, distance(x[:, :1], y[:, :1]).double(), rtol=1e-5, atol=1e-6)


def test_fidelity_lpips_without_local_weights_names_features(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: the AlexNet weights are missing
    with pytest.raises(FieldError, match=r"^features: 'fidelity:lpips:alex' the AlexNet backbone weights are "
                                         r"missing: .*alexnet-owt-7be5be79.pth does not exist"):
        make_backend("fidelity:lpips")
    with pytest.raises(FieldError, match=r"^features: 'fidelity:lpips:resnet' names the LPIPS network 'resnet'"):
        make_backend("fidelity:lpips:resnet")


def test_label_backend_agreement_with_the_shipped_classifier():
    """The shipped classifier and the 20 bundled Fashion-MNIST test images with their true labels."""
    images, labels = _bundled()
    backend = make_backend("label")
    agreement = backend.per_sample(ScoringBatch(images, labels=labels.tolist()))["label_agreement"]
    assert agreement.sum().item() == 20  # golden: the classifier gets all 20 right
    shifted = backend.per_sample(ScoringBatch(images, labels=((labels + 1) % 10).tolist()))["label_agreement"]
    assert shifted.sum().item() == 0
    with pytest.raises(FieldError, match=r"^features: 'label' needs the class label of every sample"):
        backend.per_sample(ScoringBatch(images))
    with pytest.raises(FieldError, match=r"^labels: \[10\] are outside the embedded classifier's classes 0-9"):
        backend.per_sample(ScoringBatch(images[:2], labels=[3, 10]))
    with pytest.raises(FieldError, match=r"^features: 'label' scores with the embedded Fashion-MNIST classifier"):
        backend.check_shape((3, 32, 32))


def _embedded_set() -> torch.Tensor:
    """160 Fashion-MNIST-like images: the 20 bundled ones, flipped and rolled (FID needs more than 128)."""
    images, _ = _bundled()
    variants = [images, images.flip(-1)]
    variants += [v.roll(shift, dims=-1) for v in variants for shift in (-2, 2, 4)]
    return torch.cat(variants)


def test_embedded_backend_is_todays_score_samples_with_a_golden_fid():
    """The shipped feature net and reference: the accumulator's numbers are `score_samples`' exactly."""
    images = _embedded_set()
    backend = make_backend("embedded")
    assert isinstance(backend, EmbeddedBackend) and backend.dim == 128
    ref = resolve_reference(backend, None)
    assert ref is embedded_reference() and ref.features is not None
    accumulator = MetricAccumulator(backend, ref)
    accumulator.add(ScoringBatch(images))
    values = accumulator.values()
    today = score_samples(images)
    assert values == {"fid": today.fid, "kid": today.kid, "precision": today.precision, "recall": today.recall}
    assert values["fid"] == pytest.approx(28.160, abs=0.005)  # golden
    assert score_images(images) == values  # the one-call form benchmarks use
    with pytest.raises(FieldError, match=r"^n: 128 samples is not more than the feature dimension 128 of "
                                         r"'embedded'; FID needs n > 128"):
        score_images(images[:128])


def test_running_values_give_kid_first_and_fid_once_n_exceeds_the_dimension():
    images = _embedded_set()
    accumulator = MetricAccumulator(make_backend("embedded"), embedded_reference())
    accumulator.add(ScoringBatch(images[:100]))
    assert set(accumulator.values()) == {"kid"}
    accumulator.add(ScoringBatch(images[100:]))
    assert set(accumulator.values()) == {"fid", "kid", "precision", "recall"}


# --- reference statistics in pytorch-fid's npz layout ---------------------------------------------------------------
def test_npz_round_trip_is_pytorch_fids_layout(tmp_path):
    features = torch.randn(50, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stats = FeatureStatistics.from_features(features)
    stats.save_npz(tmp_path / "ref.npz")
    with np.load(tmp_path / "ref.npz") as f:  # as pytorch-fid's calculate_frechet_distance reads it
        assert sorted(f.files) == ["mu", "sigma"]
        mu, sigma = f["mu"][:], f["sigma"][:]
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, features.numpy().mean(0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sigma, np.cov(features.numpy(), rowvar=False), rtol=1e-12)
    loaded = FeatureStatistics.load_npz(tmp_path / "ref.npz")
    assert loaded.n is None and torch.equal(loaded.mean, stats.mean) and torch.equal(loaded.cov, stats.cov)


def test_bad_reference_files_name_reference(tmp_path):
    backend = make_backend("embedded")
    with pytest.raises(FieldError, match=r"^reference: '.*missing.npz' does not exist; make one with "
                                         r"`adaptive-sampler stats"):
        resolve_reference(backend, tmp_path / "missing.npz")
    np.savez(tmp_path / "wrong.npz", mean=np.zeros(128), cov=np.eye(128))
    with pytest.raises(FieldError, match=r"^reference: '.*wrong.npz' holds the arrays \['mean', 'cov'\]; "
                                         r"reference statistics are pytorch-fid's layout"):
        resolve_reference(backend, tmp_path / "wrong.npz")
    np.savez(tmp_path / "shape.npz", mu=np.zeros(128), sigma=np.eye(127))
    with pytest.raises(FieldError, match=r"^reference: '.*shape.npz' has mu of shape \(128,\) and sigma of shape"):
        resolve_reference(backend, tmp_path / "shape.npz")
    (tmp_path / "text.npz").write_text("mu sigma")
    with pytest.raises(FieldError, match=r"^reference: '.*text.npz' is not an .npz file of reference statistics"):
        resolve_reference(backend, tmp_path / "text.npz")
    np.savez(tmp_path / "small.npz", mu=np.zeros(16), sigma=np.eye(16))
    with pytest.raises(FieldError, match=r"^reference: '.*small.npz' holds statistics of 16-d features; the "
                                         r"back-end 'embedded' has 128-d features"):
        resolve_reference(backend, tmp_path / "small.npz")
    with pytest.raises(FieldError, match=r"^reference: .* the back-end 'fidelity' has no feature space"):
        resolve_reference(make_backend("fidelity"), tmp_path / "small.npz")


def test_fid_against_an_npz_reference_equals_fid_of_the_two_feature_sets(tmp_path):
    images = _embedded_set()
    backend = make_backend("embedded")
    real = backend.feature_extractor(images.flip(-2))
    FeatureStatistics.from_features(real).save_npz(tmp_path / "ref.npz")
    ref = resolve_reference(backend, tmp_path / "ref.npz")
    accumulator = MetricAccumulator(backend, ref)
    accumulator.add(ScoringBatch(images))
    values = accumulator.values()
    assert set(values) == {"fid"}  # an npz holds no features: no KID or precision/recall
    direct = fid(FeatureStatistics.from_features(backend.feature_extractor(images)),
                 FeatureStatistics.from_features(real))
    assert values["fid"] == pytest.approx(direct, rel=1e-12)  # the npz round trip loses nothing
