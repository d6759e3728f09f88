"""Smoke tests of the training scripts on a tiny synthetic Fashion-MNIST-format folder (a few steps each)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from adaptive_sampler.datasets import load_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("t10k", 32)):
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    return folder


def _run(*args: str) -> None:
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True, capture_output=True, timeout=300,
                   env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "TQDM_DISABLE": "1"})


def test_idx_reader_reads_what_was_written(tiny_data: Path) -> None:
    images, labels = load_fashion_mnist("test", tiny_data)
    assert images.shape == (32, 28, 28) and labels.shape == (32,)


def test_missing_data_folder_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path)


def test_train_embedded_runs_checkpoints_and_resumes(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ["experiments/train_embedded.py", "--data", str(tiny_data), "--out", str(out), "--batch-size", "4",
              "--checkpoint-every", "2", "--device", "cpu"]
    _run(*common, "--steps", "2")
    assert json.loads((out / "progress.json").read_text())["step"] == 2
    _run(*common, "--steps", "3")  # resumes from step 2, not from scratch
    assert json.loads((out / "progress.json").read_text())["step"] == 3
    assert "resumed at step 2" in (out / "train.log").read_text()
    assert (out / "ema" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((out / "ema" / "scheduler_config.json").read_text())["beta_schedule"] == "linear"


def test_train_features_writes_safetensors(tiny_data: Path, tmp_path: Path) -> None:
    _run("experiments/train_features.py", "--data", str(tiny_data), "--out", str(tmp_path), "--epochs", "1",
         "--batch-size", "16", "--device", "cpu")
    weights = load_file(str(tmp_path / "feature_net.safetensors"))
    assert weights["embed.1.weight"].shape == (128, 2048)
