"""Compute the shipped Fashion-MNIST reference files of the embedded feature net and print the real-vs-real FID.

Writes into --out (default: the package's embedded/ folder):
  reference_stats_test.safetensors      moments of all 10,000 test images
  reference_stats_train.safetensors     moments of the first 10,000 training images
  reference_features_test.safetensors   features of the 10,000 test images, float16 (for KID, precision-recall)
  real_test_images.safetensors          the first 20 test images (uint8 [20, 28, 28]) and labels, for tests

    python experiments/compute_reference_stats.py --data /usr/share/datasets/fashion-mnist
    python experiments/compute_reference_stats.py --data /usr/share/datasets/fashion-mnist --space heldout
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from adaptive_sampler.datasets import load_fashion_mnist, to_model_range
from adaptive_sampler.metrics.distribution import fid
from adaptive_sampler.metrics.feature_net import SPACES
from adaptive_sampler.metrics.features import EmbeddedFeatureExtractor
from adaptive_sampler.metrics.statistics import (
    EMBEDDED_DIR,
    FeatureStatistics,
    reference_features_path,
    reference_statistics_path,
)

N_REFERENCE = 10_000
N_TEST_IMAGES = 20


def features_of(images: np.ndarray, extractor: EmbeddedFeatureExtractor, desc: str, chunk: int = 1000) -> torch.Tensor:
    return torch.cat(
        [extractor(to_model_range(images[i : i + chunk])) for i in tqdm(range(0, len(images), chunk), desc=desc)]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="folder with the four Fashion-MNIST idx files")
    p.add_argument("--out", type=Path, default=EMBEDDED_DIR)
    p.add_argument("--space", choices=SPACES, default="searched")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    extractor = EmbeddedFeatureExtractor(device=args.device, space=args.space)

    stats = {}
    for split in ("test", "train"):
        images, labels = load_fashion_mnist(split, args.data)
        features = features_of(images[:N_REFERENCE], extractor, split).cpu()
        stats[split] = FeatureStatistics.from_features(features)
        stats[split].save(args.out / reference_statistics_path(split, args.space).name)
        if split == "test":
            save_file({"features": features.half().contiguous()},
                      str(args.out / reference_features_path(args.space).name))
            save_file(
                {
                    "images": torch.from_numpy(images[:N_TEST_IMAGES].copy()),
                    "labels": torch.from_numpy(labels[:N_TEST_IMAGES].copy()),
                },
                str(args.out / "real_test_images.safetensors"),
            )
    floor = fid(stats["train"], stats["test"])
    print(f"{args.space} space: real-vs-real FID floor (first {N_REFERENCE} train vs {N_REFERENCE} test): {floor:.4f}")


if __name__ == "__main__":
    main()
