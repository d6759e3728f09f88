"""The one loop reproduces, bitwise on CPU, the outputs recorded from the two loops it replaced (every solver x
uniform/karras/learned list x η, with and without an x0-l2 monitor, and adaptive:TOL); see golden/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptive_sampler import ModelAdapter, StepSizeControl, make_policy, make_solver, sample
from adaptive_sampler.monitors import monitor_from_spec

GOLDEN = Path(__file__).resolve().parent / "golden"
META = json.loads((GOLDEN / "loop_golden.json").read_text())
CASES = META["cases"]


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / "loop_golden.safetensors")


@pytest.fixture(scope="module")
def adapter(tiny_unet, tiny_config) -> ModelAdapter:
    return ModelAdapter.from_diffusers(tiny_unet, tiny_config)


@pytest.fixture(autouse=True)
def one_thread():
    """The fixtures were recorded with one thread, so conv sums are added in the same order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(CASES))
def test_loop_reproduces_the_recorded_outputs_bitwise(name, golden, adapter):
    case = CASES[name]
    if case["policy"].startswith("adaptive:"):
        plan = StepSizeControl(tolerance=float(case["policy"].split(":")[1]))
    else:
        plan = make_policy(case["policy"]).timesteps(META["steps"], adapter.schedule)
    monitor = monitor_from_spec(case["monitor"]) if case["monitor"] else None
    result = sample(adapter, plan, (1, 8, 8), META["n"], batch_size=META["batch_size"], seed=META["seed"],
                    eta=case["eta"], solver=make_solver(case["solver"]), monitor=monitor)
    assert torch.equal(result.nfe, golden[f"{name}/nfe"])
    assert result.timesteps == case["timesteps_per_sample"]
    if f"{name}/rejected" in golden:
        assert torch.equal(result.rejected, golden[f"{name}/rejected"])
    assert torch.equal(result.samples, golden[f"{name}/samples"])
