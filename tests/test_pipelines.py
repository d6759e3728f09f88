"""Models of every kind the loader takes (issue 11), on tiny random parts built from configs and saved with
save_pretrained: a Stable Diffusion folder (ε and v), a class-conditional UNet, a 3×48×48 pixel UNet. What was
loaded, every sub-folder's file checks, prompts encoded once, sample i's prompt and batch-size invariance, the VAE
decode, and the drop-in check against diffusers' own StableDiffusionPipeline with the same noise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.models import load_model
from adaptive_sampler.pipeline import Conditions
from adaptive_sampler.sampler import sample
from helpers import run_cli, stable_diffusion_images, write_tiny_sd_dir

PROMPTS = ("a photo of cat", "a red car", "a blue shoe")
LIST = [961, 700, 451, 250, 81]  # non-uniform, as a learned list is


def test_a_stable_diffusion_folder_loads_every_part(tiny_sd_dir):
    model = load_model(tiny_sd_dir)
    assert model.sample_shape == (4, 8, 8) and model.image_shape == (3, 16, 16)
    assert model.decoder is not None and model.text_encoder is not None and model.num_classes is None
    assert model.decoder.scaling_factor == pytest.approx(0.18215)
    assert model.scheduler_config["beta_schedule"] == "scaled_linear"
    # the weights identity covers the VAE, text encoder and tokenizer too, not only the UNet
    unet_only = __import__("hashlib").sha256((tiny_sd_dir / "unet" / "diffusion_pytorch_model.safetensors")
                                             .read_bytes()).hexdigest()
    assert model.weights_sha256 != unet_only


def test_height_and_width_size_the_latents(tiny_sd_dir):
    assert load_model(tiny_sd_dir, height=32, width=24).sample_shape == (4, 16, 12)
    with pytest.raises(FieldError) as caught:
        load_model(tiny_sd_dir, height=18)
    assert caught.value.field == "height" and "multiple of 4" in caught.value.rule


def test_class_and_pixel_models(tiny_class_dir, tiny_rgb_dir):
    classes = load_model(tiny_class_dir)
    assert classes.num_classes == 10 and classes.decoder is None and classes.sample_shape == (1, 32, 32)
    rgb = load_model(tiny_rgb_dir)
    assert rgb.sample_shape == rgb.image_shape == (3, 48, 48) and rgb.conditions is None
    assert load_model(tiny_rgb_dir, height=32, width=64).sample_shape == (3, 32, 64)


def test_each_distinct_prompt_is_encoded_once(tiny_sd_dir):
    model = load_model(tiny_sd_dir)
    calls: list[int] = []
    handle = model.text_encoder.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        bound = model.with_conditions(Conditions(prompts=("a", "b", "a", "a"), guidance_scale=7.5)).conditions
    finally:
        handle.remove()
    assert calls == [1, 1, 1]  # "a", "b", then the empty prompt of the unconditional branch; one prompt per call
    assert bound.prompts_for(range(6)) == ["a", "b", "a", "a", "a", "b"]
    assert bound.conditioning.cond["encoder_hidden_states"].shape[0] == 2  # rows per distinct prompt


def _run(model, n: int, batch_size: int, start: int = 0) -> torch.Tensor:
    return sample(model.adapter(), LIST, model.sample_shape, n, batch_size=batch_size, start=start,
                  conditioning=model.conditioning).samples


def test_sample_i_takes_prompt_i_mod_p_whatever_its_batch(tiny_sd_dir):
    model = load_model(tiny_sd_dir).with_conditions(Conditions(prompts=PROMPTS, negative_prompt="a dog"))
    whole = _run(model, 7, batch_size=7)
    assert torch.equal(whole, _run(model, 7, batch_size=2))  # bitwise, in batches of 2
    alone = load_model(tiny_sd_dir).with_conditions(Conditions(prompts=(PROMPTS[4 % 3],), negative_prompt="a dog"))
    assert torch.equal(whole[4], _run(alone, 1, batch_size=1, start=4)[0])  # sample 4: prompt 1, noise (0, 4)
    assert not torch.equal(whole[3], whole[4])


def test_labels_cycle_and_are_batch_size_invariant(tiny_class_dir):
    model = load_model(tiny_class_dir).with_conditions(Conditions(labels=(3, 7)))
    assert model.conditions.labels_for(range(5)) == [3, 7, 3, 7, 3]
    whole = _run(model, 5, batch_size=5)
    assert torch.equal(whole, _run(model, 5, batch_size=3))
    seven = load_model(tiny_class_dir).with_conditions(Conditions(labels=(7,)))
    assert torch.equal(whole[3], _run(seven, 1, batch_size=1, start=3)[0])
    assert load_model(tiny_class_dir).with_conditions(Conditions()).conditions.labels == tuple(range(10))


def test_a_conditional_network_without_conditioning_says_what_to_pass(tiny_sd_dir, tiny_class_dir):
    """Not the UNet's TypeError (or ValueError) from inside the loop: a FieldError naming `conditioning`."""
    for folder, needed, hint in ((tiny_sd_dir, "encoder_hidden_states", "Conditions(prompts="),
                                 (tiny_class_dir, "class_labels", "Conditions(labels=")):
        model = load_model(folder)
        with pytest.raises(FieldError) as caught:
            sample(model.adapter(), LIST, model.sample_shape, 1)
        assert caught.value.field == "conditioning" and caught.value.value is None
        assert needed in caught.value.rule and hint in caught.value.rule
        assert "conditioning=model.conditioning" in caught.value.rule


def test_guidance_defaults_to_the_model_s_recommended_scale(tiny_sd_dir):
    from adaptive_sampler import embedded_t2i_dir  # exported beside embedded_model_dir

    def default(model) -> float:
        return model.with_conditions(Conditions(prompts=("a",))).conditions.guidance_scale

    assert default(load_model(tiny_sd_dir)) == 7.5  # a user's SD folder: StableDiffusionPipeline's default
    if embedded_t2i_dir().is_dir():
        t2i = load_model("embedded-t2i")
        assert t2i.recommended_guidance == default(t2i) == 3.0  # the best of its quality table
        assert t2i.with_conditions(Conditions(prompts=("a",), guidance_scale=7.5)).conditions.guidance_scale == 7.5


def test_the_vae_decodes_in_fixed_row_chunks(tiny_sd_dir):
    model = load_model(tiny_sd_dir)
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    images = model.decode(latents)
    assert images.shape == (3, 3, 16, 16) and float(images.abs().max()) <= 1
    assert torch.equal(images[1], model.decode(latents[1:2])[0])
    expected = model.decoder.vae.decode(latents / model.decoder.scaling_factor).sample.clamp(-1, 1)
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_drop_in_scheduler_in_stable_diffusion_gives_the_project_s_images(tmp_path, prediction_type):
    folder = write_tiny_sd_dir(tmp_path / "sd", prediction_type=prediction_type)
    prompts = [PROMPTS[i % 3] for i in range(4)]
    expected = stable_diffusion_images(folder, LIST, prompts, 7.5, "a dog")
    model = load_model(folder).with_conditions(Conditions(prompts=PROMPTS, negative_prompt="a dog"))
    assert model.scheduler_config["prediction_type"] == prediction_type
    ours = model.decode(_run(model, 4, batch_size=4))
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=0)


# ---------------------------------------------------------------- every sub-folder's files, checked first
def _refused(folder: Path, *words: str, flags: tuple[object, ...] = ("--prompt", "a cat")) -> str:
    run = run_cli("sample", "--model", folder, *flags, "--steps", 2, "--n", 1, "--device", "cpu")
    assert run.code == 2, run.err
    line = run.err_lines[-1]
    assert line.startswith("error: --model: "), line
    for word in words:
        assert word in line, (word, line)
    return line


def _edit_json(path: Path, **values: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


@pytest.mark.parametrize(("change", "words"), [
    pytest.param(lambda m: _edit_json(m / "vae" / "config.json", latent_channels=3),
                 ["vae/config.json: latent_channels: 3 does not match unet/config.json in_channels 4"], id="latents"),
    pytest.param(lambda m: _edit_json(m / "vae" / "config.json", _class_name="VQModel"),
                 ["vae/config.json: _class_name: 'VQModel'"], id="vae-class"),
    pytest.param(lambda m: _edit_json(m / "vae" / "config.json", scaling_factor=-1),
                 ["vae/config.json: scaling_factor: -1"], id="scaling"),
    pytest.param(lambda m: _edit_json(m / "vae" / "config.json", block_out_channels=[8, 32]),
                 ["/vae' cannot be loaded as AutoencoderKL", "size mismatch"], id="vae-shapes"),
    pytest.param(lambda m: (m / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x08" + b"\0" * 7),
                 ["vae/diffusion_pytorch_model.safetensors", "safetensors"], id="vae-truncated"),
    pytest.param(lambda m: (m / "vae" / "config.json").write_text("[1]"), ["vae/config.json", "JSON list"],
                 id="vae-config-a-list"),
    pytest.param(lambda m: _edit_json(m / "text_encoder" / "config.json", hidden_size=32),
                 ["text_encoder/config.json: hidden_size: 32 does not match unet/config.json cross_attention_dim 16"],
                 id="text-width"),
    pytest.param(lambda m: _edit_json(m / "text_encoder" / "config.json", model_type="t5"),
                 ["text_encoder/config.json: model_type: 't5'"], id="text-kind"),
    pytest.param(lambda m: _edit_json(m / "text_encoder" / "config.json", vocab_size=8),
                 ["text_encoder/config.json: vocab_size: 8 is below the tokenizer's"], id="vocab"),
    pytest.param(lambda m: _edit_json(m / "text_encoder" / "config.json", intermediate_size=64),
                 ["/text_encoder' cannot be loaded as a CLIPTextModel", "ignore_mismatched_sizes"], id="text-shapes"),
    pytest.param(lambda m: (m / "text_encoder" / "model.safetensors").write_bytes(b"junk"),
                 ["/text_encoder' cannot be loaded", "header too small"], id="text-corrupt"),
    pytest.param(lambda m: _edit_json(m / "tokenizer" / "tokenizer_config.json", model_max_length=77),
                 ["tokenizer/tokenizer_config.json: model_max_length: 77"], id="tokenizer-length"),
    pytest.param(lambda m: (m / "tokenizer" / "vocab.json").write_text("{"),
                 ["/tokenizer' cannot be loaded as a CLIPTokenizer", "EOF while parsing"], id="vocab-json"),
    pytest.param(lambda m: shutil.rmtree(m / "tokenizer"), ["lacks", "tokenizer", "together"], id="no-tokenizer"),
    pytest.param(lambda m: (m / "tokenizer" / "vocab.json").unlink(), ["lacks", "tokenizer/vocab.json"],
                 id="no-vocab"),
    pytest.param(lambda m: _edit_json(m / "unet" / "config.json", _class_name="UNet2DModel"),
                 ["unet/config.json: _class_name: 'UNet2DModel' is not UNet2DConditionModel"], id="unet-class"),
    pytest.param(lambda m: _edit_json(m / "scheduler" / "scheduler_config.json", prediction_type="flow"),
                 ["scheduler/scheduler_config.json: prediction_type: 'flow'"], id="prediction"),
])
def test_a_bad_file_in_any_sub_folder_names_model_the_file_and_the_field(tiny_sd_dir, tmp_path, change, words):
    folder = tmp_path / "sd"
    shutil.copytree(tiny_sd_dir, folder)
    change(folder)
    _refused(folder, *words)


def test_pickled_sub_folder_weights_need_allow_pickle(tmp_path):
    from safetensors.torch import load_file

    folder = write_tiny_sd_dir(tmp_path / "sd")
    weights = folder / "text_encoder" / "model.safetensors"
    torch.save(load_file(weights), folder / "text_encoder" / "pytorch_model.bin")  # as older folders hold it
    weights.unlink()
    _refused(folder, "text_encoder/pytorch_model.bin", "pickled", "--allow-pickle")
    assert load_model(folder, allow_pickle=True).text_encoder is not None


def test_unsupported_class_embeddings_are_refused(tiny_class_dir, tmp_path):
    folder = tmp_path / "cls"
    shutil.copytree(tiny_class_dir, folder)
    _edit_json(folder / "config.json", class_embed_type="timestep")
    _refused(folder, "config.json: class_embed_type: 'timestep' is not supported", flags=())


def test_embedded_t2i_says_when_it_is_not_installed():
    from adaptive_sampler.models import embedded_t2i_dir

    if embedded_t2i_dir().is_dir():
        assert load_model("embedded-t2i").text_encoder is not None
        return
    with pytest.raises(FieldError) as caught:
        load_model("embedded-t2i")
    assert caught.value.field == "model" and "not installed" in caught.value.rule
