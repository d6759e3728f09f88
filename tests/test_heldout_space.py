"""The held-out feature space: a second shipped Fashion-MNIST classifier of another architecture and seed, scored
beside the searched space by `eval`, and refused by every search objective."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptive_sampler.datasets import to_model_range
from adaptive_sampler.metrics.backends import ScoringBatch, make_backend
from adaptive_sampler.metrics.distribution import fid
from adaptive_sampler.metrics.evaluation import score_samples
from adaptive_sampler.metrics.features import EMBEDDED_FEATURE_NET, HELDOUT_FEATURE_NET, EmbeddedFeatureExtractor
from adaptive_sampler.metrics.statistics import EMBEDDED_DIR, embedded_reference_statistics
from helpers import run_cli


def bundled() -> tuple[torch.Tensor, torch.Tensor]:
    files = load_file(EMBEDDED_DIR / "real_test_images.safetensors")
    return to_model_range(files["images"].numpy()), files["labels"].long()


def test_the_heldout_network_is_another_network() -> None:
    searched, heldout = load_file(EMBEDDED_FEATURE_NET), load_file(HELDOUT_FEATURE_NET)
    trunk = {k: tuple(v.shape) for k, v in searched.items() if k.startswith("trunk")}
    assert trunk != {k: tuple(v.shape) for k, v in heldout.items() if k.startswith("trunk")}  # another architecture
    assert any("running_mean" in k for k in searched) and not any("running_mean" in k for k in heldout)
    assert not torch.allclose(searched["head.1.weight"], heldout["head.1.weight"])  # trained apart
    images, _ = bundled()
    a = EmbeddedFeatureExtractor(space="searched")(images)
    b = EmbeddedFeatureExtractor(space="heldout")(images)
    assert a.shape == b.shape == (20, 128)
    assert not torch.allclose(a, b, atol=1e-2)


def test_the_heldout_classifier_labels_real_images() -> None:
    images, labels = bundled()
    agreement = make_backend("label:heldout").per_sample(ScoringBatch(images, labels=labels.tolist()))
    assert agreement["label_agreement"].sum().item() >= 18  # of the 20 bundled test images


def test_the_real_vs_real_floor_of_each_space_is_small() -> None:
    for space in ("searched", "heldout"):
        floor = fid(embedded_reference_statistics("train", space), embedded_reference_statistics("test", space))
        assert 0 < floor < 1.0, (space, floor)


def test_heldout_scores_differ_from_searched_ones_on_the_same_images() -> None:
    images, _ = bundled()
    variants = [images, images.flip(-1)]
    variants += [v.roll(shift, dims=-1) for v in variants for shift in (-2, 2, 4)]
    images = torch.cat(variants)  # 160 images: FID needs more than 128
    searched, heldout = score_samples(images), score_samples(images, space="heldout")
    assert heldout.fid != searched.fid and heldout.fid > 0
    assert make_backend("heldout").spec == "heldout" and make_backend("embedded").spec == "embedded"


@pytest.mark.parametrize("objective", ["fid", "kid"])
def test_no_search_objective_takes_the_heldout_space(objective: str, tmp_path: Path) -> None:
    run = run_cli("tune", "--objective", objective, "--features", "heldout", "--steps", "3", "--trials", "1",
                  "--storage", tmp_path / "t.journal", "--cache-dir", tmp_path / "c")
    assert run.code == 2 and run.err_lines[-1].startswith("error: --features: 'heldout'"), run.err


def test_eval_reports_fid_and_kid_in_both_spaces(tmp_path: Path) -> None:
    run = run_cli("eval", "--model", "embedded", "--steps", "3", "--n", "130", "--batch-size", "130",
                  "--json", tmp_path / "e.json")
    assert run.code == 0, run.err
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["fid"] > 0 and report["heldout_space"]["fid"] > 0 and report["heldout_space"]["kid"] is not None
    assert report["heldout_space"]["fid"] != report["fid"]
    assert "held-out" in run.out  # the table's columns (rich may wrap their titles)


def test_the_exports_evaluator_scores_in_the_heldout_space_and_a_searchs_does_not(tmp_path: Path) -> None:
    from adaptive_sampler.models import load_model
    from adaptive_sampler.tuning.evaluator import ScheduleEvaluator
    from adaptive_sampler.tuning.seeds import SeedSet

    model = load_model("embedded")
    seeds = SeedSet(1_000_000, (130,))  # FID needs more samples than the 128 feature dimensions
    searched = ScheduleEvaluator(model, "kid", seeds, batch_size=130, cache_dir=tmp_path)
    audited = ScheduleEvaluator(model, "kid", seeds, batch_size=130, cache_dir=tmp_path, heldout_space=True)
    plain, both = searched.evaluate([999, 500]), audited.evaluate([999, 500])
    assert "heldout_space_fid" not in plain.metrics  # a search's evaluator never looks at the held-out space
    assert both.value == plain.value and both.metrics["kid"] == plain.metrics["kid"]
    assert both.metrics["heldout_space_fid"] > 0 and both.metrics["heldout_space_kid"] != both.metrics["kid"]
