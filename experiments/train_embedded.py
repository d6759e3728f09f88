"""Train the embedded default model: a diffusers UNet2DModel DDPM on Fashion-MNIST (32x32, grayscale).

Resumable: re-running the same command continues from `OUT/checkpoint.pt`. The EMA weights are exported in
diffusers' folder layout (safetensors) to `OUT/ema/` at every checkpoint and at the end.

    python experiments/train_embedded.py --out runs/embedded --steps 20000 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from adaptive_sampler.datasets import load_fashion_mnist, to_model_range

# The embedded model's architecture (see adaptive_sampler/embedded/MODEL_CARD.md for the reasons).
UNET_CONFIG = dict(
    sample_size=32,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64, 128),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
)
# clip_sample=False: clipping x̂0 costs DDIM 19-37 % FID at 5-100 steps (docs/experiments.md, "clip_diagnosis")
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                        prediction_type="epsilon", clip_sample=False)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoint, log, ema/ export")
    p.add_argument("--data", type=Path, default=None, help="folder with the four Fashion-MNIST idx files")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--ema-decay", type=float, default=0.9995)
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--limit-images", type=int, default=None, help="train on the first N images (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args()


def export_ema(ema: EMAModel, model: UNet2DModel, out: Path) -> None:
    """Write the EMA weights as a diffusers model folder (safetensors) plus the scheduler config."""
    ema_model = UNet2DModel.from_config(model.config)
    ema.copy_to(ema_model.parameters())
    tmp = out / "ema.tmp"
    ema_model.save_pretrained(tmp, safe_serialization=True)
    DDPMScheduler(**SCHEDULER_CONFIG).save_pretrained(tmp)
    final = out / "ema"
    if final.exists():
        for f in final.iterdir():
            f.unlink()
        final.rmdir()
    tmp.rename(final)


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=args.out / "train.log", level=logging.INFO, format="%(asctime)s %(message)s")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    images, _ = load_fashion_mnist("train", args.data)
    data = to_model_range(images[: args.limit_images]).to(device)

    model = UNet2DModel(**UNET_CONFIG).to(device)
    ema = EMAModel(model.parameters(), decay=args.ema_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    generator = torch.Generator(device=device).manual_seed(args.seed)

    ckpt_path = args.out / "checkpoint.pt"
    step, elapsed_before = 0, 0.0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        ema.to(device)
        optimizer.load_state_dict(ckpt["optimizer"])
        generator.set_state(ckpt["generator"].cpu() if device.type == "cpu" else ckpt["generator"].cpu())
        step, elapsed_before = ckpt["step"], ckpt["elapsed_s"]
        logging.info("resumed at step %d", step)

    params = sum(p.numel() for p in model.parameters())
    logging.info("params=%d device=%s args=%s", params, device, vars(args))
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def save(step: int, elapsed: float) -> None:
        tmp = args.out / "checkpoint.pt.tmp"
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(), "step": step, "elapsed_s": elapsed}, tmp)
        tmp.replace(ckpt_path)
        export_ema(ema, model, args.out)
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        (args.out / "progress.json").write_text(json.dumps({"step": step, "elapsed_s": elapsed, "params": params,
                                                             "device": str(device_name),
                                                             "batch_size": args.batch_size}))
        logging.info("checkpoint at step %d (%.0f s)", step, elapsed)

    start = time.perf_counter()
    bar = tqdm(total=args.steps, initial=step, desc="train", dynamic_ncols=True)
    model.train()
    while step < args.steps:
        idx = torch.randint(0, data.shape[0], (args.batch_size,), device=device, generator=generator)
        x0 = data[idx]
        flip = torch.rand(args.batch_size, device=device, generator=generator) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch_size,), device=device,
                          generator=generator)
        noise = torch.randn(x0.shape, device=device, generator=generator)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
        with amp:
            pred = model(xt, t).sample
        loss = F.mse_loss(pred.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ema.step(model.parameters())
        step += 1
        bar.update(1)
        elapsed = elapsed_before + time.perf_counter() - start
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            logging.info("step %d loss %.5f", step, loss.item())
        out_of_time = args.max_minutes is not None and elapsed > args.max_minutes * 60
        if step % args.checkpoint_every == 0 or step == args.steps or out_of_time:
            save(step, elapsed)
        if out_of_time:
            logging.info("time budget reached at step %d", step)
            break
    bar.close()


if __name__ == "__main__":
    main()
