"""Train an embedded feature network (a Fashion-MNIST classifier, training split only) and write its weights as
safetensors: the searched space (`--arch searched`, feature_net.safetensors) or the held-out one (`--arch heldout`,
heldout_feature_net.safetensors: another architecture and seed, never used by a search).

    python experiments/train_features.py --out runs/features --epochs 15
    python experiments/train_features.py --arch heldout --seed 1 --epochs 8 --out runs/heldout_features
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from adaptive_sampler.datasets import load_fashion_mnist, to_model_range
from adaptive_sampler.metrics.feature_net import FashionFeatureNet, HeldoutFeatureNet

ARCHITECTURES = {"searched": (FashionFeatureNet, "feature_net.safetensors"),
                 "heldout": (HeldoutFeatureNet, "heldout_feature_net.safetensors")}


def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    net.eval()
    with torch.inference_mode():
        correct = sum((net(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item()
                      for i in range(0, len(x), batch))
    return correct / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=None, help="folder with the four Fashion-MNIST idx files")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--limit-images", type=int, default=None, help="train on the first N images (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", choices=list(ARCHITECTURES), default="searched")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=args.out / "features.log", level=logging.INFO, format="%(asctime)s %(message)s")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    train_images, train_labels = load_fashion_mnist("train", args.data)
    test_images, test_labels = load_fashion_mnist("test", args.data)
    x = to_model_range(train_images[: args.limit_images]).to(device)
    y = torch.from_numpy(train_labels[: args.limit_images].astype("int64")).to(device)
    x_test = to_model_range(test_images).to(device)
    y_test = torch.from_numpy(test_labels.astype("int64")).to(device)

    architecture, filename = ARCHITECTURES[args.arch]
    net = architecture().to(device)
    steps_per_epoch = (len(x) + args.batch_size - 1) // args.batch_size
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.epochs * steps_per_epoch)
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(x), device=device)
        for i in tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False):
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            xb = x[idx]
            xb = torch.where(torch.rand(len(xb), 1, 1, 1, device=device) < 0.5, xb.flip(-1), xb)
            # small random shifts: the classifier must not key on exact pixel placement
            dx, dy = torch.randint(-2, 3, (2,)).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(net(xb), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(net, x_test, y_test)
        logging.info("epoch %d loss %.4f test_acc %.4f", epoch + 1, loss.item(), acc)
        print(f"epoch {epoch + 1}: test accuracy {acc:.4f}")
    save_file({k: v.contiguous().cpu() for k, v in net.state_dict().items()}, str(args.out / filename))


if __name__ == "__main__":
    main()
