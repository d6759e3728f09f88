"""Builders shared by the tests: tiny randomly initialised UNets and the scheduler config they are sampled with.

Import them with `from helpers import ...` (pyproject's `[tool.pytest.ini_options] pythonpath` puts tests/ on the
path); the fixtures built from them live in conftest.py.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel, UNet2DModel

TINY_SHAPE = (1, 8, 8)


def build_tiny_unet(seed: int = 0, channels: int = 1) -> UNet2DModel:
    """An 8x8 UNet2DModel (a few thousand parameters), weights fixed by `seed`."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval().requires_grad_(False)


def tiny_scheduler_config() -> dict[str, Any]:
    """diffusers' default DDIM config: linear β 1e-4…0.02, ε-prediction, x̂0 clipped to [-1, 1]."""
    return dict(DDIMScheduler().config)


def build_tiny_conditional_unet(seed: int = 0) -> UNet2DConditionModel:
    """A 4-channel 8x8 UNet2DConditionModel with cross-attention on 16-wide embeddings, weights fixed by `seed`."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
    ).eval()


class RowCounter:
    """`network` wrapped to record the row count of every call in `rows` (how the adapter batches its calls)."""

    def __init__(self, network: Callable[..., Any]) -> None:
        self.network, self.rows = network, []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> Any:
        self.rows.append(x.shape[0])
        return self.network(x, t, **kwargs)


# --- the command line in-process ----------------------------------------------------------------------------------


def write_tiny_model_dir(root: Path, safe: bool = True) -> Path:
    """`build_tiny_unet()` saved as a diffusers folder in `root` (config.json, weights, scheduler_config.json)."""
    build_tiny_unet().save_pretrained(root, safe_serialization=safe)
    DDIMScheduler().save_config(root)
    return root


@dataclass
class CliRun:
    """What one in-process run of the console entry point did: its exit status, stdout and stderr."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


def run_cli(*args: object) -> CliRun:
    """Run `adaptive-sampler ARGS` through `main()` in this process (no fixtures needed, so hypothesis can call it
    many times in one test). An exception other than SystemExit propagates: that is a traceback for the user."""
    from adaptive_sampler.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    saved = sys.argv
    sys.argv = ["adaptive-sampler", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved
    return CliRun(code, out.getvalue(), err.getvalue())


# --- tune worker processes (tests of several workers and of killed ones) -------------------------------------------
TUNE_WORKER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("tuning_storage", sys.argv[1])
storage = importlib.util.module_from_spec(spec)
sys.modules["tuning_storage"] = storage
spec.loader.exec_module(storage)  # Optuna-only module: the worker starts without torch
import optuna
optuna.logging.set_verbosity(optuna.logging.ERROR)
url, name, n_trials, n_warm, hang_on = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
warm = [storage.WarmStart(tag=f"w{i}", params={"x": float(i)}) for i in range(n_warm)]
# a 6 s grace: a live worker starved of CPU for a few seconds must not be taken for a dead one
study = storage.open_study(storage.open_storage(url, heartbeat_interval=1, grace_period=6), name, ["minimize"],
                           config={"k": 1}, warm_starts=lambda: warm).study
def heartbeat_recorded(trial):
    rdb = getattr(study._storage, "_backend", study._storage)  # Optuna caches an RDBStorage behind _CachedStorage
    if not hasattr(rdb, "engine"):
        return True  # a journal: no heartbeat
    import sqlalchemy
    with rdb.engine.connect() as connection:
        query = sqlalchemy.text("SELECT 1 FROM trial_heartbeats WHERE trial_id = :id")
        return connection.execute(query, {"id": trial._trial_id}).first() is not None
def objective(trial):
    x = trial.suggest_float("x", -10, 10)
    tag = trial.user_attrs.get("warm_start")
    if hang_on in ("any", tag):
        while not heartbeat_recorded(trial):  # Optuna's heartbeat thread may not have written yet
            time.sleep(0.01)
        print(f"running {trial.number} {tag}", flush=True)
        time.sleep(600)  # the test kills the worker here, mid-trial
    time.sleep(0.05)
    return x * x
print(storage.run_trials(study, objective, n_trials), flush=True)
"""


def start_tune_worker(workdir: Path, url: str, study_name: str, n_trials: int, *, n_warm: int = 8,
                      hang_on: str = "none") -> subprocess.Popen[str]:
    """A process running `run_trials` on study `study_name` in storage `url` (heartbeat 1 s, grace period 6 s), on
    x² with warm starts x = 0, 1, … tagged w0, w1, …. `hang_on` ('any', a warm-start tag, or 'none'): the trial on
    which the worker prints `running <number> <tag>`, once the trial's first heartbeat is stored, and sleeps, to be
    killed. It prints its WorkerSummary last."""
    from adaptive_sampler.tuning import storage

    script = workdir / "tune_worker.py"
    script.write_text(TUNE_WORKER)
    return subprocess.Popen([sys.executable, str(script), storage.__file__, url, study_name, str(n_trials),
                             str(n_warm), hang_on], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# --- model folders of every kind the loader takes (issue 11) -------------------------------------------------------
TINY_WORDS = ("a", "photo", "of", "cat", "dog", "red", "blue", "car", "shoe", "bag")


def write_tiny_clip_tokenizer(folder: Path, max_length: int = 16, words: tuple[str, ...] = TINY_WORDS) -> Path:
    """A CLIP BPE tokenizer over `words` (vocab.json, merges.txt, tokenizer_config.json), as an SD folder's
    tokenizer/ holds them: the special tokens, every letter (alone and word-final) and the merges that build each
    word left to right. Unknown words fall back to letters."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in sorted(set("".join(words))):
        vocab.setdefault(letter, len(vocab))
        vocab.setdefault(letter + "</w>", len(vocab))
    merges: list[str] = []
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            vocab.setdefault(pieces[0], len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer",
                                                              "model_max_length": max_length}))
    return folder


def sd_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    """Stable Diffusion 1.x's DDIM config (scaled-linear β 0.00085…0.012, no clipping, steps offset 1)."""
    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)


def write_tiny_sd_dir(root: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """A Stable Diffusion-layout folder of tiny random parts: unet/ (`build_tiny_conditional_unet`, 4×8×8 latents,
    cross-attention width 16), vae/ (AutoencoderKL, 2× downsampling: 3×16×16 images), text_encoder/ (a 2-layer
    CLIPTextModel of width 16), tokenizer/ (`write_tiny_clip_tokenizer`), scheduler/ and model_index.json."""
    import json

    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    build_tiny_conditional_unet(seed).save_pretrained(root / "unet")
    torch.manual_seed(seed + 1)
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                  norm_num_groups=4, sample_size=16, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2).save_pretrained(root / "vae")
    tokenizer = write_tiny_clip_tokenizer(root / "tokenizer")
    vocab = len(json.loads((tokenizer / "vocab.json").read_text()))
    torch.manual_seed(seed + 2)
    CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
                                 vocab_size=vocab, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1)).save_pretrained(root / "text_encoder")
    sd_scheduler(prediction_type).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None],
        "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False}))
    return root


def write_tiny_class_unet_dir(root: Path, num_classes: int = 10, seed: int = 0, size: int = 32) -> Path:
    """A class-conditional 1×32×32 UNet2DModel (`num_class_embeds`; the embedded classifier's image shape, so the
    `label` metric applies) with diffusers' default DDIM config."""
    torch.manual_seed(seed)
    UNet2DModel(sample_size=size, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=num_classes).save_pretrained(root)
    DDIMScheduler().save_config(root)
    return root


def write_tiny_rgb_unet_dir(root: Path, size: int = 48, seed: int = 0) -> Path:
    """A 3×48×48 pixel UNet2DModel as a DDPM pipeline folder (unet/, scheduler/)."""
    torch.manual_seed(seed)
    UNet2DModel(sample_size=size, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D")).save_pretrained(root / "unet")
    DDIMScheduler().save_pretrained(root / "scheduler")
    return root


def stable_diffusion_images(folder: Path, timesteps: list[int], prompts: list[str], guidance: float,
                            negative: str | None, seed: int = 0) -> torch.Tensor:
    """diffusers' StableDiffusionPipeline over `timesteps` through the drop-in scheduler, from the noise the
    project's sampler draws for samples 0 … n-1 (passed as `latents=`), as images in [-1, 1]."""
    from diffusers import StableDiffusionPipeline

    from adaptive_sampler.dropins import AdaptiveDDIMScheduler
    from adaptive_sampler.seeding import draw_noise, sample_generator

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False, local_files_only=True)
    # ᾱ = 1 after the last step: the project's sampler returns x̂0 there (SD's own config ends at ᾱ_0)
    pipe.scheduler = AdaptiveDDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=True)
    pipe.set_progress_bar_config(disable=True)
    shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    latents = draw_noise([sample_generator(seed, i) for i in range(len(prompts))], shape)
    out = pipe(prompt=prompts, negative_prompt=[negative] * len(prompts) if negative else None, timesteps=timesteps,
               guidance_scale=guidance, latents=latents, output_type="pt").images
    return out * 2 - 1
