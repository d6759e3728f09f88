"""Tuning objectives on the metric back-ends: fid/kid unchanged on the embedded default, fid in another feature
space with --reference, clip-score, clip-at-fid, label, and where bad combinations are refused. The CLIP folder is
a tiny random CLIPModel with a tiny tokenizer made in the test (metric_weights.py); the embedded ones are shipped."""

from __future__ import annotations

import json
import math

import pytest
import torch
from metric_weights import write_tiny_clip_dir
from pydantic import ValidationError
from safetensors.torch import load_file

from adaptive_sampler.datasets import to_model_range
from adaptive_sampler.errors import FieldError
from adaptive_sampler.metrics import (
    EmbeddedFeatureExtractor,
    FeatureStatistics,
    KidReference,
    embedded_reference_features,
    embedded_reference_statistics,
    fid,
    kid,
    make_backend,
)
from adaptive_sampler.metrics.statistics import EMBEDDED_DIR
from adaptive_sampler.models import load_model
from adaptive_sampler.policies import make_policy
from adaptive_sampler.tuning import ScheduleEvaluator, SeedSet, get_objective
from adaptive_sampler.tuning.settings import TuneSettings
from helpers import run_cli


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_tiny_clip_dir(tmp_path_factory.mktemp("clip"), projection_dim=4)


@pytest.fixture(scope="module")
def clip_reference(tmp_path_factory, clip_dir):
    """Statistics of 12 random 8x8 images in the tiny CLIP space, in pytorch-fid's layout."""
    images = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1
    path = tmp_path_factory.mktemp("ref") / "ref.npz"
    FeatureStatistics.from_features(make_backend(f"clip:{clip_dir}").feature_extractor(images)).save_npz(path)
    return path


def _embedded_images() -> torch.Tensor:
    bundled = load_file(EMBEDDED_DIR / "real_test_images.safetensors")
    images = to_model_range(bundled["images"].numpy())
    return torch.cat([v.roll(s, dims=-1) for v in (images, images.flip(-1)) for s in (-3, -1, 0, 1, 3, 5, 7, 9)])


def test_embedded_fid_and_kid_objectives_score_as_before():
    """The shipped feature net and reference: the running scores are today's formulas (KID per chunk, FID once
    n > 128), with a golden FID."""
    images = _embedded_images()  # 320 images
    evaluator = ScheduleEvaluator(load_model("embedded"), "fid", SeedSet(0, (160, 160)), cache_dir=None)
    scores = list(evaluator.scorer.evaluate([(0, images[:160]), (1, images[160:])], evaluator))
    features = EmbeddedFeatureExtractor()(images)
    reference = KidReference(embedded_reference_features())
    stats = embedded_reference_statistics("test")
    assert scores[0].metrics == {"kid": kid(features[:160], reference),
                                 "fid": fid(FeatureStatistics.from_features(features[:160]), stats)}
    assert scores[1].value == scores[1].metrics["fid"] == fid(FeatureStatistics.from_features(features), stats)
    assert scores[1].value == pytest.approx(27.048, abs=0.005)  # golden
    kid_scores = list(get_objective("kid").evaluate([(0, images[:100])], evaluator))
    assert kid_scores[0].metrics == {"kid": kid(features[:100], reference)} and kid_scores[0].value == \
        kid_scores[0].metrics["kid"]


def test_fid_in_the_clip_space_against_an_npz_reference(tiny_model_dir, clip_dir, clip_reference):
    objective = get_objective("fid").configured(features=f"clip:{clip_dir}", reference=clip_reference)
    assert objective.min_n == 129 and objective.default_n == 2048  # max(the default, 2 rungs of 129)
    model = load_model(tiny_model_dir)
    evaluator = ScheduleEvaluator(model, objective, SeedSet(0, (130, 130)), cache_dir=None, batch_size=130)
    ts = make_policy("uniform").timesteps(2, model.adapter().schedule)
    result = evaluator.evaluate(ts)
    samples = torch.cat([evaluator.sample(ts, 0), evaluator.sample(ts, 1)])
    expected = fid(FeatureStatistics.from_features(make_backend(f"clip:{clip_dir}").feature_extractor(samples)),
                   FeatureStatistics.load_npz(clip_reference))
    assert result.value == pytest.approx(expected, rel=1e-6) and set(result.metrics) == {"fid"}
    assert objective.study_identity()["features"] == f"clip:{clip_dir}"
    assert len(str(objective.study_identity()["reference_sha256"])) == 64


def test_clip_score_and_clip_at_fid(tiny_model_dir, clip_dir, clip_reference):
    model = load_model(tiny_model_dir)
    prompts = ["a photo of a shirt", "a bag", "a dress"]
    clip_score = get_objective("clip-score").configured(features=f"clip:{clip_dir}")
    evaluator = ScheduleEvaluator(model, clip_score, SeedSet(0, (5, 4)), cache_dir=None, prompts=prompts)
    ts = make_policy("uniform").timesteps(2, model.adapter().schedule)
    result = evaluator.evaluate(ts)
    clip = make_backend(f"clip:{clip_dir}").clip
    per_chunk = [clip.clip_score(evaluator.sample(ts, j), [prompts[i % 3] for i in range(n)])
                 for j, n in enumerate((5, 4))]
    assert result.value == pytest.approx(float(torch.cat(per_chunk).double().mean()), rel=1e-5, abs=1e-6)

    at_fid = get_objective("clip-at-fid").configured(features=f"clip:{clip_dir}", reference=clip_reference,
                                                     fid_limit=1e9)
    assert at_fid.min_n == 5 and at_fid.direction == "maximize"
    evaluator = ScheduleEvaluator(model, at_fid, SeedSet(0, (5, 4)), cache_dir=None, prompts=prompts)
    scores = evaluator.evaluate(ts)
    assert set(scores.metrics) == {"fid", "clip_score"} and scores.value == scores.metrics["clip_score"]
    tight = get_objective("clip-at-fid").configured(features=f"clip:{clip_dir}", reference=clip_reference,
                                                    fid_limit=1e-6)
    assert tight.value(scores.metrics) == pytest.approx(1e-6 - scores.metrics["fid"])  # below every feasible one
    assert math.isnan(tight.value({"clip_score": 30.0}))  # FID not defined yet (n <= dim)


def test_label_objective_on_the_shipped_classifier():
    images = _embedded_images()[:40]  # the bundled 20 rolled by -3 and -1 pixels: sample i shows image i mod 20
    labels = load_file(EMBEDDED_DIR / "real_test_images.safetensors")["labels"].tolist()
    evaluator = ScheduleEvaluator(load_model("embedded"), "label", SeedSet(0, (40,)), cache_dir=None, labels=labels)
    (score,) = evaluator.scorer.evaluate([(0, images)], evaluator)
    assert score.value == 1.0 and score.metrics == {"label_agreement": 1.0}  # golden: all 40 recognised
    wrong = ScheduleEvaluator(load_model("embedded"), "label", SeedSet(0, (40,)), cache_dir=None,
                              labels=[(v + 1) % 10 for v in labels])
    assert next(iter(wrong.scorer.evaluate([(0, images)], wrong))).value == 0.0


@pytest.mark.parametrize(("objective", "kwargs", "field", "message"), [
    ("fid", {"features": "fidelity"}, "features", "cannot give objective 'fid' its metric 'fid'; use embedded or "
                                                  "inception:PATH or clip:PATH"),
    ("clip-score", {}, "features", "given; objective 'clip-score' needs --features clip:PATH"),
    ("fid", {"features": "clip:{clip}"}, "reference", "given; objective 'fid' with --features clip:"),
    ("fidelity", {"reference": "{ref}"}, "reference", "is not used by objective 'fidelity'"),
    ("fid", {"fid_limit": 3.0}, "fid_limit", "is not used by objective 'fid'"),
    ("clip-at-fid", {"features": "clip:{clip}", "reference": "{ref}"}, "fid_limit", "must be a positive FID"),
    ("fid", {"features": "nope"}, "features", "cannot give objective 'fid' its metric 'fid'"),
    ("fidelity", {"features": "fidelity:ssim"}, "features", "is not a metric back-end"),
])
def test_bad_objective_configurations_name_the_field(clip_dir, clip_reference, objective, kwargs, field, message):
    filled = {k: v.format(clip=clip_dir, ref=clip_reference) if isinstance(v, str) else v for k, v in kwargs.items()}
    if "reference" in filled:
        filled["reference"] = clip_reference
    with pytest.raises(FieldError) as info:
        get_objective(objective).configured(**filled)
    assert info.value.field == field and message.format(clip=clip_dir) in info.value.rule


def test_kid_needs_reference_features_and_settings_locate_bad_values(tiny_model_dir, tmp_path):
    from adaptive_sampler.metrics import embedded_reference

    (FeatureStatistics.from_features(embedded_reference().features[:300].double())
     .save_npz(tmp_path / "ref.npz"))
    objective = get_objective("kid").configured(reference=tmp_path / "ref.npz")
    with pytest.raises(FieldError, match=r"^objective: 'kid' needs the reference's features"):
        ScheduleEvaluator(load_model("embedded"), objective, SeedSet(0, (4,)), cache_dir=None).prepare()
    with pytest.raises(ValidationError) as info:
        TuneSettings(objective="clip-at-fid", fid_limit=-1.0)
    assert info.value.errors()[0]["loc"] == ("fid_limit",)
    with pytest.raises(FieldError, match=r"^objective: 'fid' scores samples in the embedded Fashion-MNIST"):
        ScheduleEvaluator(load_model(tiny_model_dir), "fid", SeedSet(0, (130,)), cache_dir=None)


def test_tune_with_fid_in_the_clip_space_runs_and_exports(tmp_path, tiny_model_dir, clip_dir, clip_reference):
    run = run_cli("tune", "--model", tiny_model_dir, "--steps", "2", "--trials", "2", "--objective", "fid",
                  "--features", f"clip:{clip_dir}", "--reference", clip_reference, "--n", "130", "--heldout-n",
                  "130", "--no-warm-start", "--no-baselines", "--storage", tmp_path / "t.journal", "--export",
                  tmp_path / "schedules", "--plots", tmp_path / "plots", "--cache-dir", tmp_path / "cache",
                  "--device", "cpu", "--batch-size", "130")
    assert run.code == 0, run.err
    (exported,) = (tmp_path / "schedules").rglob("*.json")
    metrics = json.loads(exported.read_text())["metrics"]
    assert metrics["heldout_fid"] > 0 and metrics["heldout_n"] == 130
    bad = run_cli("tune", "--model", tiny_model_dir, "--objective", "clip-score", "--storage",
                  tmp_path / "u.journal", "--device", "cpu")
    assert bad.code == 2 and bad.err_lines[-1].startswith("error: --features: None given; objective 'clip-score' "
                                                         "needs --features clip:PATH"), bad.err


def test_tune_clip_at_fid_on_a_text_to_image_model(tmp_path, clip_dir, clip_reference):
    """A tiny random Stable Diffusion folder (tests/helpers.py) tuned for CLIP score at a fixed FID in the tiny CLIP
    space: the exported held-out metrics carry both terms, and the value is the CLIP score within the limit."""
    from helpers import write_tiny_sd_dir

    model = write_tiny_sd_dir(tmp_path / "sd")
    run = run_cli("tune", "--model", model, "--prompt", "a photo of a shirt", "--steps", "2", "--trials", "2",
                  "--objective", "clip-at-fid", "--features", f"clip:{clip_dir}", "--reference", clip_reference,
                  "--fid-limit", "1e9", "--n", "6", "--heldout-n", "6", "--no-warm-start", "--no-baselines",
                  "--storage", tmp_path / "t.journal", "--export", tmp_path / "schedules", "--plots",
                  tmp_path / "plots", "--cache-dir", tmp_path / "cache", "--device", "cpu")
    assert run.code == 0, run.err
    (exported,) = (tmp_path / "schedules").rglob("*.json")
    metrics = json.loads(exported.read_text())["metrics"]
    assert metrics["heldout_fid"] > 0 and 0 <= metrics["heldout_clip_score"] <= 100
    assert metrics["tuning_clip-at-fid"] >= 0  # within the limit: a CLIP score
