"""The LPIPS monitor end to end: `sample()` and `adaptive-sampler sample` with `lpips:THRESHOLD` and a tail finish, its
AlexNet backbone read from the torch hub cache ($TORCH_HOME).

The backbone file here has the format of torchvision's ImageNet AlexNet file (same keys and shapes) but random
values: the real weights cannot reach this machine. Its scores are not perceptual, so the threshold is chosen from
the scores of this run (half the samples end early), not from what LPIPS means. With this random model the score
falls at every step, so the early samples end at step 8 of 10 and their 3-step tail costs more than it saves: the
test checks the mechanics (exits, tail, NFE, untouched neighbours, the CLI), not the savings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, UNet2DModel

from adaptive_sampler.finish import Finish, parse_finish, tail_timesteps
from adaptive_sampler.models import LoadedModel, load_model
from adaptive_sampler.monitors import AnyOf, monitor_from_spec
from adaptive_sampler.monitors.lpips_distance import backbone_weights_path
from adaptive_sampler.sampler import sample
from helpers import run_cli

N, STEPS = 8, 10
UNIFORM_10 = [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$TORCH_HOME with a random-valued AlexNet backbone file where torchvision keeps the ImageNet one."""
    from torchvision.models import alexnet

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = backbone_weights_path("alex")
    path.parent.mkdir(parents=True)
    torch.manual_seed(1)
    torch.save({k: v for k, v in alexnet(weights=None).state_dict().items() if k.startswith("features.")}, path)
    return path


@pytest.fixture
def model_32(tmp_path: Path) -> Path:
    """A tiny grayscale 32x32 UNet folder: AlexNet (LPIPS' backbone) needs at least 31 pixels a side."""
    torch.manual_seed(0)
    UNet2DModel(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D")).save_pretrained(tmp_path / "unet32")
    DDIMScheduler().save_config(tmp_path / "unet32")
    return tmp_path / "unet32"


def _run(loaded: LoadedModel, spec: str | None, trace: bool = False):
    watch = AnyOf(monitor_from_spec(spec)) if spec else None
    result = sample(loaded.adapter(network_rows=8), UNIFORM_10, loaded.sample_shape, N, batch_size=N, monitor=watch,
                    finish=Finish() if spec else None, trace=trace)
    return result, watch.stopped_by if watch is not None else {}


def test_an_lpips_monitor_ends_samples_on_a_tail_and_leaves_the_others_bitwise_unchanged(hub_cache, model_32,
                                                                                            tmp_path):
    loaded = load_model(str(model_32))
    free, _ = _run(loaded, None, trace=True)
    assert free.trace is not None
    probe = monitor_from_spec("lpips:0")  # reads the backbone file; scores every step of the unmonitored run
    scores = torch.stack([probe(info).score for info in free.trace])  # [steps, N]; NaN at step 0
    tail, tails = parse_finish("tail"), 0
    lowest = scores[1:STEPS - 1].amin(0)  # a sample can end early at steps 1 … 8 (step 9 ends the chain anyway)
    early = scores[1:STEPS - 1 - tail.steps].amin(0)  # and take its tail at steps 1 … 5 (more than 3 left)
    ranked = early.sort().values
    threshold = float((ranked[N // 2 - 1] + ranked[N // 2]) / 2)  # half the samples take a tail
    spec = f"lpips:{threshold!r}"

    result, stopped = _run(loaded, spec)
    ended = sorted(stopped)
    assert ended == sorted((lowest <= threshold).nonzero().flatten().tolist()) and len(ended) >= N // 2
    for i in range(N):
        exit_step = int((scores[1:, i] <= threshold).nonzero()[0]) + 1 if i in stopped else STEPS
        if STEPS - exit_step - 1 > tail.steps:  # the plan up to its exit step, then a 3-step tail to 0, in NFE
            t = torch.tensor([UNIFORM_10[exit_step]])
            walked = UNIFORM_10[:exit_step + 1] + tail_timesteps(t, tail, loaded.adapter().schedule)[0].tolist()
            assert result.timesteps[i] == walked and int(result.nfe[i]) == exit_step + 1 + tail.steps
            assert not torch.equal(result.samples[i], free.samples[i])
            tails += 1
        else:  # not ended, or with at most 3 evaluations left: the plan to its end
            assert result.timesteps[i] == UNIFORM_10 and int(result.nfe[i]) == STEPS
            assert torch.equal(result.samples[i], free.samples[i])
    assert torch.isfinite(result.samples).all() and tails == N // 2

    save, report = tmp_path / "x.npy", tmp_path / "r.json"
    run = run_cli("sample", "--model", model_32, "--steps", STEPS, "--n", N, "--monitor", spec, "--finish", "tail",
                  "--network-rows", 8, "--device", "cpu", "--save", save, "--json", report)
    assert run.code == 0, run.err
    data = json.loads(report.read_text())
    assert data["finish"] == "tail:3:t" and data["timesteps"] == UNIFORM_10
    assert data["stopped_by"] == [spec if i in stopped else None for i in range(N)]
    assert data["nfe_per_sample"] == result.nfe.tolist()
    assert np.array_equal(np.load(save), result.samples.numpy())
