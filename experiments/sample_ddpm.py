"""DDPM ancestral sampling (diffusers' DDPMScheduler, all training steps) from a diffusers model folder.

Writes a float32 .npy of shape (n, C, H, W) in the model's range. Used for the quality table's 1000-step row.

    python experiments/sample_ddpm.py --model adaptive_sampler/embedded/unet --n 2000 --out ddpm1000.npy
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from tqdm import tqdm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True,
                   help="folder with config.json, safetensors, scheduler_config.json")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    unet = UNet2DModel.from_pretrained(args.model, use_safetensors=True).to(device).eval()
    scheduler = DDPMScheduler.from_pretrained(args.model)
    scheduler.set_timesteps(scheduler.config.num_train_timesteps)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    chunks = []
    with torch.inference_mode():
        for start in range(0, args.n, args.batch_size):
            rows = min(args.batch_size, args.n - start)
            x = torch.randn((rows, *shape), device=device, generator=generator)
            for t in tqdm(scheduler.timesteps, desc=f"ddpm {start}/{args.n}", leave=False):
                x = scheduler.step(unet(x, t).sample, t, x, generator=generator).prev_sample
            chunks.append(x.float().cpu().numpy())
    np.save(args.out, np.concatenate(chunks))


if __name__ == "__main__":
    main()
