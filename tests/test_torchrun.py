"""Sampling and evaluation across processes (`torchrun -m adaptive_sampler`, issue 16): two CPU processes on gloo
give the samples, NFE, stopping monitors and FID of one process bit for bit; rank 0 alone writes and prints. Also
the pieces in-process: the shards, `sample(start=...)`, and the plain fallback outside torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from pydantic import ValidationError
from typer.testing import CliRunner

from adaptive_sampler import ModelAdapter, distributed, sample
from adaptive_sampler.cli import app
from helpers import TINY_SHAPE, build_tiny_unet

TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RUN_ID")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["OMP_NUM_THREADS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU and gloo, also on a machine with GPUs
    return env


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def one_process(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _run(["-m", "adaptive_sampler", *map(str, args)], cwd)


def in_process(*args: object) -> None:
    """The command in this process, on one thread as the subprocesses run (CPU kernels may vary with threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"


def two_processes(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    # `--` ends torchrun's options: its argparse would otherwise take --n for a prefix of --nnodes, --nproc-per-node
    return _run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "--",
                 "adaptive_sampler", *map(str, args)], cwd)


def _model_dir(root: Path, size: int) -> Path:
    unet = build_tiny_unet()
    unet.register_to_config(sample_size=size)  # convolutional: the same weights sample any size
    unet.save_pretrained(root)
    DDIMScheduler().save_config(root)
    return root


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """`build_tiny_unet()` as a diffusers folder: samples (1, 8, 8)."""
    return _model_dir(tmp_path_factory.mktemp("tiny"), 8)


@pytest.fixture(scope="module")
def tiny32_dir(tmp_path_factory) -> Path:
    """The same UNet on the embedded feature space's shape (1, 32, 32), so that `eval` can score it."""
    return _model_dir(tmp_path_factory.mktemp("tiny32"), 32)


def _same_report(one: dict, two: dict) -> None:
    timing = {"wall_s", "samples_per_s"}
    assert {k: v for k, v in one.items() if k not in timing} == {k: v for k, v in two.items() if k not in timing}


# ---------------------------------------------------------------- torchrun, two CPU processes


def test_sample_on_two_processes_is_bitwise_one_process(tiny_dir, tmp_path):
    # 7 samples: shards of 4 and 3, batches of 2 that differ from one process's; a monitor stops some samples
    args = ["sample", "--model", tiny_dir, "--steps", 8, "--monitor", "x0-l2:0.1", "--n", 7, "--batch-size", 2]
    one = one_process(*args, "--save", "one.npy", "--json", "one.json", cwd=tmp_path)
    two = two_processes(*args, "--save", "two.npy", "--json", "two.json", "--out", "two.png", cwd=tmp_path)
    a, b = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
    assert a.shape == b.shape == (7, *TINY_SHAPE) and a.dtype == b.dtype == np.float32
    assert a.tobytes() == b.tobytes()
    report_one = json.loads((tmp_path / "one.json").read_text())
    report_two = json.loads((tmp_path / "two.json").read_text())
    _same_report(report_one, report_two)  # timesteps, NFE per sample, stopped_by, model, policy, n, seed, ...
    stopped = report_two["stopped_by"]
    assert None in stopped[:4] or None in stopped[4:]  # not every sample stopped early ...
    assert any(stopped[:4]) and any(stopped[4:])  # ... and each rank's shard has a stopped one, gathered
    assert (tmp_path / "two.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # rank 0 alone writes (no stray files) and prints its one summary line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.json", "one.npy", "two.json", "two.npy", "two.png"]
    assert two.stdout.count("7 samples, 8 steps") == 1
    assert one.stdout.count("7 samples, 8 steps") == 1


@pytest.mark.parametrize("n", [136, pytest.param(1001, marks=pytest.mark.slow)])
def test_eval_on_two_processes_gives_the_one_process_fid(tiny32_dir, tmp_path, n):
    # 136: one feature batch (rank 0's); 1001: two (1000 + 1), one on each rank (the worker below tests more)
    args = ["eval", "--model", tiny32_dir, "--steps", 2, "--n", n, "--batch-size", 256, "--network-rows", 64]
    in_process(*args, "--json", tmp_path / "one.json")
    two = two_processes(*args, "--json", "two.json", "--save", "two.npy", cwd=tmp_path)
    report_one = json.loads((tmp_path / "one.json").read_text())
    report_two = json.loads((tmp_path / "two.json").read_text())
    assert report_two["n"] == n and np.isfinite(report_two["fid"])
    _same_report(report_one, report_two)  # FID, KID, precision, recall exactly, and the sampling report
    assert np.load(tmp_path / "two.npy").shape == (n, 1, 32, 32)
    assert two.stdout.count("FID") == 1  # one table, from rank 0


WORKER = """
import torch
from diffusers import DDIMScheduler
from adaptive_sampler import ModelAdapter, NonFiniteOutputError, NoiseSchedule, distributed, sample
from adaptive_sampler.metrics.features import EmbeddedFeatureExtractor
from adaptive_sampler.seeding import draw_noise, sample_generator

# features: batches 0 and 200 on rank 0, 100 on rank 1, gathered in order, bitwise one process's
extractor = EmbeddedFeatureExtractor(batch_size=100)
images = torch.rand(250, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
assert torch.equal(distributed.features(images, extractor), extractor(images))

bad_value = float(draw_noise([sample_generator(0, 9)], (1, 4, 4))[0, 0, 0, 0])

def network(x, t):  # NaN for sample 9 only, at its first step (where x is its noise): in any batch
    return torch.where((x[:, :1, :1, :1] - bad_value).abs() < 1e-7, float("nan"), 0.1 * x)

adapter = ModelAdapter(network, NoiseSchedule.from_config(DDIMScheduler().config))
errors = []
for run in (sample, distributed.sample):  # one process, then sharded: samples 0-5 on rank 0, 6-11 on rank 1
    try:
        run(adapter, [999, 500, 0], (1, 4, 4), 12, batch_size=2)
    except NonFiniteOutputError as exc:
        errors.append(exc)
one, two = errors
assert (two.step, two.t, two.sample_indices) == (one.step, one.t, one.sample_indices) == (0, 999, [9])
assert len(one.partial.samples) == 8 and torch.equal(two.partial.samples, one.partial.samples)
assert torch.equal(two.partial.nfe, one.partial.nfe)
mine = {distributed.ranks().rank: "m"}
assert distributed.gather_stopped_by(mine) == {0: "m", 1: "m"}
open(f"ok{distributed.ranks().rank}", "w").close()
"""


def test_features_gather_and_a_non_finite_output_raises_the_one_process_error_on_every_rank(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    done = _run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)], tmp_path)
    assert (tmp_path / "ok0").exists() and (tmp_path / "ok1").exists(), done.stdout + done.stderr


# ---------------------------------------------------------------- in-process


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 8])
def test_shards_are_contiguous_and_cover_every_index_once(world_size):
    for n in range(1, 20):
        shards = [distributed.shard(n, rank, world_size) for rank in range(world_size)]
        assert [i for s in shards for i in s] == list(range(n))
        assert all(len(s) <= -(-n // world_size) for s in shards)


def test_sample_from_start_is_that_slice_of_the_whole_run(tiny_unet, tiny_config):
    adapter = ModelAdapter.from_diffusers(tiny_unet, tiny_config)
    whole = sample(adapter, [999, 600, 300, 0], TINY_SHAPE, 7, batch_size=3, seed=4, eta=0.5)
    part = sample(adapter, [999, 600, 300, 0], TINY_SHAPE, 3, batch_size=2, seed=4, eta=0.5, start=4)
    assert torch.equal(part.samples, whole.samples[4:])
    assert torch.equal(part.nfe, whole.nfe[4:]) and part.timesteps == whole.timesteps[4:]
    with pytest.raises(ValidationError, match="start"):
        sample(adapter, [999, 0], TINY_SHAPE, 1, start=-1)


def test_outside_torchrun_everything_is_the_one_process_code(tiny_unet, tiny_config, monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    assert distributed.ranks() is None and distributed.is_main()
    adapter = ModelAdapter.from_diffusers(tiny_unet, tiny_config)
    a = distributed.sample(adapter, [999, 500, 0], TINY_SHAPE, 3, batch_size=2, seed=1)
    b = sample(adapter, [999, 500, 0], TINY_SHAPE, 3, batch_size=2, seed=1)
    assert torch.equal(a.samples, b.samples)
    assert distributed.gather_stopped_by({2: "x0-l2:0.1"}) == {2: "x0-l2:0.1"}
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.ranks() == distributed.Ranks(3, 4, 1) and not distributed.is_main()
