"""The shipped text-to-image folder (adaptive_sampler/embedded/t2i): its layout, shapes and dtypes, and that unmodified
diffusers' StableDiffusionPipeline draws what the prompt asks for, judged by the embedded Fashion-MNIST classifier."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open

from adaptive_sampler.metrics import load_embedded_feature_net

ROOT = Path(__file__).resolve().parents[1]
T2I = ROOT / "adaptive_sampler" / "embedded" / "t2i"
WEIGHTS = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
           "text_encoder": "model.safetensors"}
SNEAKER, TROUSER, BAG = 7, 1, 8


def _config(part: str, name: str = "config.json") -> dict:
    return json.loads((T2I / part / name).read_text())


@pytest.fixture(scope="module")
def pipe() -> StableDiffusionPipeline:
    pipeline = StableDiffusionPipeline.from_pretrained(T2I)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_model_index_is_a_stable_diffusion_pipeline_without_safety_checker() -> None:
    index = json.loads((T2I / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    assert index["requires_safety_checker"] is False
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]


def test_shapes_tie_the_parts_together() -> None:
    unet, vae, text = _config("unet"), _config("vae"), _config("text_encoder")
    scheduler = _config("scheduler", "scheduler_config.json")
    # Grayscale end to end: 1x32x32 images <-> 4x8x8 latents (three VAE levels downsample x4).
    assert (vae["in_channels"], vae["out_channels"], vae["sample_size"]) == (1, 1, 32)
    assert len(vae["block_out_channels"]) == 3 and vae["latent_channels"] == 4
    assert (unet["in_channels"], unet["out_channels"], unet["sample_size"]) == (4, 4, 8)
    assert unet["cross_attention_dim"] == text["hidden_size"]
    # SD sets scaling_factor to 1/std of the latents; the untrained default is 0.18215.
    assert 0.05 < vae["scaling_factor"] < 20 and vae["scaling_factor"] != 0.18215
    tokenizer_config = _config("tokenizer", "tokenizer_config.json")
    assert tokenizer_config["model_max_length"] == text["max_position_embeddings"]
    assert len(json.loads((T2I / "tokenizer" / "vocab.json").read_text())) == text["vocab_size"]
    assert (scheduler["beta_schedule"], scheduler["beta_start"], scheduler["beta_end"]) == ("scaled_linear", 0.00085,
                                                                                            0.012)
    assert scheduler["prediction_type"] == "epsilon" and scheduler["clip_sample"] is False


@pytest.mark.parametrize("part", sorted(WEIGHTS))
def test_weights_are_float32_safetensors_within_the_size_budget(part: str) -> None:
    with safe_open(T2I / part / WEIGHTS[part], "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    assert dtypes == {"F32"}
    total = sum(p.stat().st_size for p in T2I.rglob("*") if p.is_file())
    assert total <= 20e6


def test_tokenizer_knows_every_prompt_word(pipe: StableDiffusionPipeline) -> None:
    tok = pipe.tokenizer
    assert tok.tokenize("a photo of a sneaker") == ["a</w>", "photo</w>", "of</w>", "a</w>", "sneaker</w>"]
    assert tok.tokenize("A Grayscale picture of an Ankle Boot") == [
        "a</w>", "grayscale</w>", "picture</w>", "of</w>", "an</w>", "ankle</w>", "boot</w>"]
    for word in ("t-shirt", "top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "bag"):
        assert len(tok.tokenize(word)) == (3 if word == "t-shirt" else 1), word
    ids = tok("", padding="max_length", max_length=tok.model_max_length).input_ids
    assert ids[0] == tok.bos_token_id and set(ids[1:]) == {tok.eos_token_id}


def test_pipeline_outputs_grayscale_images(pipe: StableDiffusionPipeline) -> None:
    out = pipe("a photo of a bag", num_inference_steps=4, guidance_scale=3.0,
               generator=torch.Generator().manual_seed(0))
    assert out.images[0].mode == "L" and out.images[0].size == (32, 32)


@pytest.mark.parametrize(("prompt", "label"), [("a photo of a sneaker", SNEAKER), ("a photo of a trouser", TROUSER),
                                               ("bag", BAG)])
def test_pipeline_draws_what_the_prompt_asks_for(pipe: StableDiffusionPipeline, prompt: str, label: int) -> None:
    n = 8
    generators = [torch.Generator().manual_seed(i) for i in range(n)]
    images = pipe([prompt] * n, num_inference_steps=20, guidance_scale=3.0, generator=generators,
                  output_type="pt").images
    assert images.shape == (n, 1, 32, 32)
    with torch.inference_mode():
        predicted = load_embedded_feature_net()(images * 2 - 1).argmax(1)
    assert (predicted == label).sum() >= 6, predicted.tolist()


@pytest.mark.slow
def test_training_script_stages_resume_and_export_a_loadable_pipeline(tmp_path: Path) -> None:
    import gzip

    import numpy as np

    data = tmp_path / "fmnist"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 32), ("t10k", 16)):
        for kind, array in (("images", rng.integers(0, 256, (n, 28, 28))), ("labels", rng.integers(0, 10, (n,)))):
            header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            with gzip.open(data / f"{split}-{kind}-idx{array.ndim}-ubyte.gz", "wb") as f:
                f.write(header + array.astype(np.uint8).tobytes())
    out, dest = tmp_path / "run", tmp_path / "t2i"

    def run(*args: str) -> None:
        subprocess.run([sys.executable, "experiments/train_t2i.py", *args, "--out", str(out), "--data", str(data)],
                       cwd=ROOT, check=True, capture_output=True, timeout=600,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "TQDM_DISABLE": "1"})

    run("vae", "--steps", "2", "--batch-size", "4")
    run("latents")
    run("t2i", "--steps", "2", "--batch-size", "4")
    run("t2i", "--steps", "3", "--batch-size", "4")  # resumes from step 2
    assert "resumed at step 2" in (out / "t2i" / "train.log").read_text()
    run("export", "--dest", str(dest))
    assert json.loads((dest / "training_step.json").read_text())["t2i_step"] == 3
    pipeline = StableDiffusionPipeline.from_pretrained(dest)
    images = pipeline("a photo of a coat", num_inference_steps=2, output_type="pt").images
    assert images.shape == (1, 1, 32, 32)
