"""The shipped model and feature network work offline and produce what their cards say."""

from __future__ import annotations

import json

import torch

from adaptive_sampler import load_model, make_policy, sample
from adaptive_sampler.models import embedded_model_dir


def test_embedded_model_loads_offline_and_samples() -> None:
    model = load_model("embedded")
    assert model.name == "fashion-mnist" and model.sample_shape == (1, 32, 32)
    assert sum(p.numel() for p in model.network.parameters()) == 2_734_945
    adapter = model.adapter()
    result = sample(adapter, make_policy("uniform").timesteps(2, adapter.schedule), model.sample_shape, 2, seed=0)
    assert result.samples.shape == (2, 1, 32, 32)
    assert torch.isfinite(result.samples).all()


def test_embedded_scheduler_config_is_the_ddpm_one_without_clipping() -> None:
    config = json.loads((embedded_model_dir() / "scheduler_config.json").read_text())
    assert (config["num_train_timesteps"], config["beta_schedule"], config["beta_start"], config["beta_end"],
            config["prediction_type"]) == (1000, "linear", 0.0001, 0.02, "epsilon")
    # not the DDPM default: clipping x̂0 costs DDIM about a fifth of its FID (docs/experiments.md, "clip_diagnosis")
    assert config["clip_sample"] is False and config["thresholding"] is False
    assert (embedded_model_dir() / "diffusion_pytorch_model.safetensors").stat().st_size < 15_000_000
