"""Train the embedded text-to-image model: Stable Diffusion in miniature on Fashion-MNIST (`--model embedded-t2i`).

Stages, each resumable (re-running the same command continues from its checkpoint in `--out`):

    python experiments/train_t2i.py vae     --steps 4000    # AutoencoderKL, 1x32x32 <-> 4x8x8
    python experiments/train_t2i.py floor                   # VAE reconstruction FID (the pipeline's floor)
    python experiments/train_t2i.py latents                 # encode the training set once, fix scaling_factor
    python experiments/train_t2i.py t2i     --steps 12000   # UNet2DConditionModel + CLIPTextModel, jointly
    python experiments/train_t2i.py export  --dest adaptive_sampler/embedded/t2i

`export` writes the EMA weights as a `StableDiffusionPipeline` folder (float32 safetensors) that unmodified
diffusers loads with `StableDiffusionPipeline.from_pretrained(dest)`. Images are grayscale with ONE channel end to
end: the pipeline's image processor turns [n, 1, H, W] into mode "L" PIL images. Runs on the CPU (one thread with
OMP_NUM_THREADS=1) unless `--device cuda`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from tqdm import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from adaptive_sampler.datasets import load_fashion_mnist, to_model_range

# Fashion-MNIST's class names as the data set spells them; "t-shirt/top" is also prompted as "t-shirt" and "top".
CLASS_NAMES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
CLASS_ALIASES = {0: ("t-shirt/top", "t-shirt", "top")}
TEMPLATES = (
    "{name}", "a {name}", "a photo of a {name}", "a grayscale picture of a {name}", "a picture of a {name}",
    "an image of a {name}", "a photo of the {name}", "a black and white photo of a {name}", "a drawing of a {name}",
    "a low resolution photo of a {name}",
)
EMPTY_PROMPT_FRACTION = 0.1  # the unconditional branch of classifier-free guidance
MAX_PROMPT_TOKENS = 16  # the longest prompt is 12 tokens with its start and end tokens

VAE_CONFIG = dict(
    in_channels=1, out_channels=1, sample_size=32, latent_channels=4, layers_per_block=1, norm_num_groups=8,
    block_out_channels=(16, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
)
TEXT_ENCODER_CONFIG = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                           max_position_embeddings=MAX_PROMPT_TOKENS, hidden_act="quick_gelu")
UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=TEXT_ENCODER_CONFIG["hidden_size"], attention_head_dim=8, norm_num_groups=16,
)
# SD 1.x's noise schedule; clip_sample=False because latents are not confined to [-1, 1] (as SD's own config).
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                        prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def article_for(name: str) -> str:
    return "an" if name[0] in "aeiou" else "a"


def class_prompts(label: int) -> list[str]:
    """Every training prompt of one class: each template with each alias, with 'a' and (before a vowel) 'an'."""
    prompts = []
    for name in CLASS_ALIASES.get(label, (CLASS_NAMES[label],)):
        for template in TEMPLATES:
            prompts.append(template.format(name=name))
            if article_for(name) == "an":
                prompts.append(template.replace("a {name}", "an {name}").format(name=name))
    return list(dict.fromkeys(prompts))


# ---------------------------------------------------------------------------------------------------------- tokenizer
def build_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP-style byte-level BPE (vocab.json + merges.txt) trained by `tokenizers` on the prompt templates.

    The vocabulary holds CLIP's 256 byte symbols with and without the end-of-word mark (so any text tokenizes), the
    merges learned from the prompts (every prompt word ends as one token) and the two special tokens.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    # The normalizer and pre-tokenizer of transformers' CLIPTokenizer, so the merges fit how it splits text.
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=10_000, min_frequency=1, initial_alphabet=alphabet, show_progress=False,
                                  end_of_word_suffix="</w>")
    corpus = [p for label in range(len(CLASS_NAMES)) for p in class_prompts(label)]
    tok.train_from_iterator(corpus, trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    byte_symbols = sorted(alphabet, key=lambda c: _BYTE_ORDER[c])
    vocab_list = byte_symbols + [c + "</w>" for c in byte_symbols] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_list))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_PROMPT_TOKENS, "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "clean_up_tokenization_spaces": True,
    }, indent=2) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    for prompt in corpus:  # every prompt word is one token: the BPE has learned the whole prompt vocabulary
        n_words = len(prompt.replace("/", " / ").replace("-", " - ").split())
        assert len(tokenizer(prompt).input_ids) == n_words + 2, (prompt, tokenizer.tokenize(prompt))
    return tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map (the order of CLIP's first 256 vocabulary entries)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


_BYTE_ORDER = {c: i for i, c in enumerate(_bytes_to_unicode().values())}


# --------------------------------------------------------------------------------------------------------- training
def setup(out: Path, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for h in logging.root.handlers[:]:
        logging.root.removeHandler(h)
    logging.basicConfig(filename=out / "train.log", level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(seed)


def train_loop(out: Path, modules: dict[str, torch.nn.Module], step_loss: Callable[[int], torch.Tensor],
               args: argparse.Namespace, generator: torch.Generator) -> dict[str, EMAModel]:
    """AdamW with warm-up, grad-norm clip 1.0, EMA; checkpoint every `--checkpoint-every` steps and at the end."""
    for m in modules.values():
        m.to(args.device)
    params = [p for m in modules.values() for p in m.parameters()]
    emas = {name: EMAModel(m.parameters(), decay=args.ema_decay) for name, m in modules.items()}
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    ckpt_path = out / "checkpoint.pt"
    step, elapsed_before = 0, 0.0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        for name, m in modules.items():
            m.load_state_dict(ckpt["model"][name])
            emas[name].load_state_dict(ckpt["ema"][name])
            emas[name].to(args.device)
        optimizer.load_state_dict(ckpt["optimizer"])
        generator.set_state(ckpt["generator"])
        step, elapsed_before = ckpt["step"], ckpt["elapsed_s"]
        logging.info("resumed at step %d", step)
    n_params = sum(p.numel() for p in params)
    logging.info("params=%d args=%s", n_params, {k: str(v) for k, v in vars(args).items()})

    def save(step: int, elapsed: float) -> None:
        tmp = out / "checkpoint.pt.tmp"
        torch.save({"model": {n: m.state_dict() for n, m in modules.items()},
                    "ema": {n: e.state_dict() for n, e in emas.items()}, "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(), "step": step, "elapsed_s": elapsed}, tmp)
        tmp.replace(ckpt_path)
        (out / "progress.json").write_text(json.dumps({"step": step, "elapsed_s": elapsed, "params": n_params,
                                                       "batch_size": args.batch_size}) + "\n")
        logging.info("checkpoint at step %d (%.0f s)", step, elapsed)

    start = time.perf_counter()
    bar = tqdm(total=args.steps, initial=step, desc=out.name, dynamic_ncols=True, mininterval=30)
    for m in modules.values():
        m.train()
    running = None
    while step < args.steps:
        for group in optimizer.param_groups:  # linear warm-up, then cosine decay to 10 % of the peak
            progress = step / max(1, args.steps)
            group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup) * (0.55 + 0.45 * math.cos(math.pi * progress))
        loss = step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        for name, m in modules.items():
            emas[name].step(m.parameters())
        step += 1
        bar.update(1)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        elapsed = elapsed_before + time.perf_counter() - start
        if step % 50 == 0:
            bar.set_postfix(loss=f"{running:.4f}")
            logging.info("step %d loss %.5f (smoothed %.5f) %.0f s", step, loss.item(), running, elapsed)
        out_of_time = args.max_minutes is not None and elapsed > args.max_minutes * 60
        if step % args.checkpoint_every == 0 or step == args.steps or out_of_time:
            save(step, elapsed)
        if out_of_time:
            logging.info("time budget reached at step %d", step)
            break
    bar.close()
    return emas


def load_ema(out: Path, name: str, model: torch.nn.Module) -> torch.nn.Module:
    """`model` with the EMA weights of module `name` from `out/checkpoint.pt`, in eval mode."""
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    ema = EMAModel(model.parameters())
    ema.load_state_dict(ckpt["ema"][name])
    ema.copy_to(model.parameters())
    logging.info("loaded EMA %s from step %d", name, ckpt["step"])
    return model.eval()


def train_vae(args: argparse.Namespace) -> None:
    out = args.out / "vae"
    setup(out, args.seed)
    images, _ = load_fashion_mnist("train", args.data)
    data = to_model_range(images)
    vae = AutoencoderKL(**VAE_CONFIG)
    generator = torch.Generator().manual_seed(args.seed)

    def step_loss(step: int) -> torch.Tensor:
        x = data[torch.randint(0, len(data), (args.batch_size,), generator=generator)]
        flip = torch.rand(args.batch_size, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x).to(args.device)
        posterior = vae.encode(x).latent_dist
        eps = torch.randn(posterior.mean.shape, generator=generator).to(args.device)
        recon = vae.decode(posterior.mean + posterior.std * eps).sample
        # L1 + L2 reconstruction per pixel; a small KL per pixel keeps the latents smooth for the diffusion model.
        rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        return rec + args.kl_weight * posterior.kl().mean() / x[0].numel()

    train_loop(out, {"vae": vae}, step_loss, args, generator)


def trained_vae(args: argparse.Namespace) -> AutoencoderKL:
    vae = load_ema(args.out / "vae", "vae", AutoencoderKL(**VAE_CONFIG))
    assert isinstance(vae, AutoencoderKL)
    return vae


@torch.inference_mode()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Encode to the posterior mean (as the pipeline's latents are deterministic at the end) and decode."""
    parts = [vae.decode(vae.encode(images[i:i + batch_size]).latent_dist.mode()).sample.clamp(-1, 1)
             for i in range(0, len(images), batch_size)]
    return torch.cat(parts)


def vae_floor(args: argparse.Namespace) -> None:
    """FID of VAE reconstructions in the embedded feature space, beside the real-vs-real floor."""
    from dataclasses import asdict

    from adaptive_sampler.metrics import score_samples
    from adaptive_sampler.metrics.distribution import fid
    from adaptive_sampler.metrics.statistics import embedded_reference_statistics

    setup(args.out / "vae", args.seed)
    vae = trained_vae(args)
    test, _ = load_fashion_mnist("test", args.data)
    train, _ = load_fashion_mnist("train", args.data)
    held_out = to_model_range(train[-args.n:])
    rows = {
        "vae-recon-test-10k": asdict(score_samples(reconstruct(vae, to_model_range(test)))),
        f"vae-recon-train-last-{args.n}": asdict(score_samples(reconstruct(vae, held_out))),
        f"real-vs-real-train-last-{args.n}": asdict(score_samples(held_out)),
        "real-vs-real-10k-vs-10k": {"fid": fid(embedded_reference_statistics("train"),
                                              embedded_reference_statistics("test"))},
        "recon_mse_test": float(F.mse_loss(reconstruct(vae, to_model_range(test)), to_model_range(test))),
    }
    text = json.dumps(rows, indent=2)
    logging.info("floor %s", text)
    (args.out / "vae_floor.json").write_text(text + "\n")
    print(text)


def encode_latents(args: argparse.Namespace) -> None:
    """Posterior mean and std of every training image and its mirror image, and the latent std (SD's scaling)."""
    setup(args.out / "vae", args.seed)
    vae = trained_vae(args)
    images, labels = load_fashion_mnist("train", args.data)
    x = to_model_range(images)
    x = torch.cat([x, x.flip(-1)])
    means, stds = [], []
    with torch.inference_mode():
        for i in tqdm(range(0, len(x), 1000), desc="encode"):
            dist = vae.encode(x[i:i + 1000]).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    mean, std = torch.cat(means), torch.cat(stds)
    generator = torch.Generator().manual_seed(args.seed)
    sample = mean + std * torch.randn(mean.shape, generator=generator)
    scaling_factor = 1.0 / sample.std().item()
    labels_t = torch.from_numpy(labels.astype("int64"))
    save_file({"mean": mean.contiguous(), "std": std.contiguous(), "labels": torch.cat([labels_t, labels_t])},
              args.out / "latents.safetensors", metadata={"scaling_factor": repr(scaling_factor)})
    logging.info("latents %s, mean %.4f std %.4f -> scaling_factor %.5f, posterior std mean %.4f", tuple(mean.shape),
                 sample.mean().item(), sample.std().item(), scaling_factor, std.mean().item())
    print(f"scaling_factor={scaling_factor:.5f}")


def load_latents(args: argparse.Namespace) -> tuple[dict[str, torch.Tensor], float]:
    from safetensors import safe_open

    path = args.out / "latents.safetensors"
    with safe_open(path, "pt") as f:
        scaling_factor = float(f.metadata()["scaling_factor"])
    return load_file(path), scaling_factor


def new_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                            **TEXT_ENCODER_CONFIG)
    return CLIPTextModel(config)


def prompt_table(tokenizer: CLIPTokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids of every prompt [P, L], its class [P], and the ids of the empty prompt [L]."""
    prompts, classes = [], []
    for label in range(len(CLASS_NAMES)):
        for p in class_prompts(label):
            prompts.append(p)
            classes.append(label)

    def ids(texts: list[str]) -> torch.Tensor:
        return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids

    return ids(prompts), torch.tensor(classes), ids([""])[0]


def train_t2i(args: argparse.Namespace) -> None:
    out = args.out / "t2i"
    setup(out, args.seed)
    # Built once per run: the BPE trainer breaks frequency ties in no fixed order, and the text encoder's
    # embedding rows belong to the ids of the first build.
    folder = out / "tokenizer"
    tokenizer = CLIPTokenizer.from_pretrained(folder) if (folder / "vocab.json").exists() else build_tokenizer(folder)
    latents, scaling_factor = load_latents(args)
    mean, std, labels = latents["mean"], latents["std"], latents["labels"]
    prompt_ids, prompt_class, empty_ids = prompt_table(tokenizer)
    by_class = [torch.nonzero(prompt_class == c).flatten() for c in range(len(CLASS_NAMES))]
    counts = torch.tensor([len(b) for b in by_class])
    offsets = torch.cumsum(counts, 0) - counts
    order = torch.cat(by_class)
    text_encoder, unet = new_text_encoder(tokenizer), UNet2DConditionModel(**UNET_CONFIG)
    alphas_cumprod = DDIMScheduler(**SCHEDULER_CONFIG).alphas_cumprod
    generator = torch.Generator().manual_seed(args.seed)
    logging.info("vocab %d, %d prompts, scaling_factor %.5f", len(tokenizer), len(prompt_ids), scaling_factor)

    def step_loss(step: int) -> torch.Tensor:
        b = args.batch_size
        idx = torch.randint(0, len(mean), (b,), generator=generator)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=generator)) * scaling_factor
        y = labels[idx]
        pick = (torch.rand(b, generator=generator) * counts[y]).long()
        ids = prompt_ids[order[offsets[y] + pick]]
        empty = torch.rand(b, generator=generator) < EMPTY_PROMPT_FRACTION
        ids = torch.where(empty[:, None], empty_ids, ids)
        t = torch.randint(0, len(alphas_cumprod), (b,), generator=generator)
        noise = torch.randn(z0.shape, generator=generator)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        zt, t, ids, noise = (v.to(args.device) for v in (a.sqrt() * z0 + (1 - a).sqrt() * noise, t, ids, noise))
        hidden = text_encoder(ids).last_hidden_state
        return F.mse_loss(unet(zt, t, encoder_hidden_states=hidden).sample, noise)

    train_loop(out, {"unet": unet, "text_encoder": text_encoder}, step_loss, args, generator)


def export(args: argparse.Namespace) -> None:
    """The EMA weights of the latest checkpoints as a StableDiffusionPipeline folder (float32 safetensors)."""
    setup(args.out / "t2i", args.seed)
    _, scaling_factor = load_latents(args)
    tokenizer = CLIPTokenizer.from_pretrained(args.out / "t2i" / "tokenizer")
    vae = trained_vae(args)
    vae.register_to_config(scaling_factor=scaling_factor)
    unet = load_ema(args.out / "t2i", "unet", UNet2DConditionModel(**UNET_CONFIG))
    text_encoder = load_ema(args.out / "t2i", "text_encoder", new_text_encoder(tokenizer))
    step = torch.load(args.out / "t2i" / "checkpoint.pt", map_location="cpu", weights_only=True)["step"]
    tmp = args.dest.with_name(args.dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, module in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder)):
        # float32: from_pretrained without torch_dtype keeps each file's dtype, and a float16 UNet under a
        # float32 text encoder fails; float32 also runs fastest on CPUs, and all of it is ~10 MB.
        module.save_pretrained(tmp / name, safe_serialization=True)
    (tmp / "tokenizer").mkdir()
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(args.out / "t2i" / "tokenizer" / f, tmp / "tokenizer" / f)
    DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(tmp / "scheduler")
    from diffusers import __version__ as diffusers_version

    (tmp / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers_version,
        "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }, indent=2) + "\n")
    (tmp / "training_step.json").write_text(json.dumps({"t2i_step": step, "scaling_factor": scaling_factor}) + "\n")
    if args.dest.exists():
        card = args.dest / "MODEL_CARD.md"
        if card.exists():
            shutil.copy(card, tmp / "MODEL_CARD.md")
        shutil.rmtree(args.dest)
    tmp.rename(args.dest)
    size = sum(f.stat().st_size for f in args.dest.rglob("*") if f.is_file())
    logging.info("exported step %d to %s (%.2f MB)", step, args.dest, size / 1e6)
    print(f"exported step {step} to {args.dest} ({size / 1e6:.2f} MB)")


STAGES = {"vae": train_vae, "floor": vae_floor, "latents": encode_latents, "t2i": train_t2i, "export": export}
DEFAULTS = {  # per-stage defaults, chosen by measured CPU speed (see the model card)
    "vae": dict(steps=2500, batch_size=64, lr=1e-3, warmup=200, ema_decay=0.999),
    "t2i": dict(steps=20000, batch_size=128, lr=5e-4, warmup=500, ema_decay=0.9995),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=tuple(STAGES))
    p.add_argument("--out", type=Path, default=Path("runs/t2i"), help="run folder: checkpoints, logs, latents")
    p.add_argument("--dest", type=Path, default=Path("adaptive_sampler/embedded/t2i"), help="export folder")
    p.add_argument("--data", type=Path, default=None, help="folder with the four Fashion-MNIST idx files")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--ema-decay", type=float, default=None)
    p.add_argument("--kl-weight", type=float, default=1e-3, help="VAE: weight of the per-pixel KL term")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--n", type=int, default=2000, help="floor: held-out training images for the n-matched floor")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="training device (cuda on a GPU machine)")
    args = p.parse_args()
    for key, value in DEFAULTS.get(args.stage, {}).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main() -> None:
    args = parse_args()
    STAGES[args.stage](args)


if __name__ == "__main__":
    main()
