"""Adaptive step-size control combined with the multistep solvers and with monitors, in the one loop.

The accepted path of a sample never sees its rejected evaluations, so a sample equals the static run of the same
solver over its own accepted timesteps, bitwise; a monitor only ends samples (x̂0 of their exit evaluation) and
leaves the others bitwise unchanged.
"""

from __future__ import annotations

import pytest
import torch

from adaptive_sampler import Finish, ModelAdapter, StepSizeControl, make_solver, sample
from adaptive_sampler.monitors import MaxNFE, monitor_from_spec
from helpers import TINY_SHAPE

SOLVERS = ["ddim", "dpmpp-2m", "unipc"]


@pytest.fixture(scope="module")
def adapter(tiny_unet, tiny_config) -> ModelAdapter:
    return ModelAdapter.from_diffusers(tiny_unet, tiny_config)


@pytest.mark.parametrize("solver", SOLVERS)
def test_adaptive_sample_equals_the_static_solver_over_its_accepted_timesteps(adapter, solver):
    result = sample(adapter, StepSizeControl(tolerance=0.01), TINY_SHAPE, 5, batch_size=5, seed=4,
                    solver=make_solver(solver))
    assert len({tuple(ts) for ts in result.timesteps}) > 1, "samples of one batch should walk different timesteps"
    assert int(result.rejected.sum()) > 0, "this tolerance should reject some steps on the random tiny UNet"
    for i, timesteps in enumerate(result.timesteps):
        assert timesteps[0] == 999 and timesteps[-1] == 0
        static = sample(adapter, timesteps, TINY_SHAPE, i + 1, batch_size=i + 1, seed=4, solver=make_solver(solver))
        assert torch.equal(result.samples[i], static.samples[i]), f"sample {i}"


@pytest.mark.parametrize("solver", SOLVERS)
def test_adaptive_multistep_run_is_bitwise_identical_across_batch_sizes(adapter, solver):
    runs = [sample(adapter, StepSizeControl(tolerance=0.01), TINY_SHAPE, 5, batch_size=bs, seed=9,
                   solver=make_solver(solver)) for bs in (1, 2, 5)]
    for run in runs[1:]:
        assert torch.equal(run.samples, runs[0].samples)
        assert run.timesteps == runs[0].timesteps and torch.equal(run.nfe, runs[0].nfe)


def test_second_order_solvers_take_different_paths_from_ddim(adapter):
    """The multistep update is really used: same controller, same noise, different samples."""
    plan = StepSizeControl(tolerance=0.01)
    ddim, dpmpp = (sample(adapter, plan, TINY_SHAPE, 3, seed=2, solver=make_solver(s)) for s in ("ddim", "dpmpp-2m"))
    assert not torch.equal(ddim.samples, dpmpp.samples)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("batch_size", [2, 5])
def test_max_nfe_caps_an_adaptive_run_and_leaves_the_others_bitwise_unchanged(adapter, solver, batch_size):
    plan, update = StepSizeControl(tolerance=0.01), make_solver(solver)
    free = sample(adapter, plan, TINY_SHAPE, 5, batch_size=batch_size, seed=3, solver=update, trace=True)
    cap = int(free.nfe.min()) + 3  # some samples finish before the cap, the others are cut by it
    capped = sample(adapter, plan, TINY_SHAPE, 5, batch_size=batch_size, seed=3, solver=update,
                    monitor=MaxNFE(cap))
    assert torch.equal(capped.nfe, free.nfe.clamp(max=cap))
    cut = free.nfe > cap
    assert bool(cut.any()) and bool((~cut).any())
    assert torch.equal(capped.samples[~cut], free.samples[~cut])
    for i in cut.nonzero().flatten().tolist():  # a cut sample returns x̂0 of its cap-th evaluation
        step = free.trace[[k for k, info in enumerate(free.trace) if i in info.sample_indices.tolist()][cap - 1]]
        row = step.sample_indices.tolist().index(i)
        assert torch.equal(capped.samples[i], step.x0[row]), f"sample {i}"


def test_adaptive_unipc_with_an_x0_monitor_ends_samples_at_their_own_steps(adapter):
    """All three at once: per-sample step sizes, a multistep solver, and exits on an x̂0 monitor."""
    plan, update = StepSizeControl(tolerance=0.01), make_solver("unipc")
    free = sample(adapter, plan, TINY_SHAPE, 6, batch_size=3, seed=5, solver=update)
    watched = [sample(adapter, plan, TINY_SHAPE, 6, batch_size=bs, seed=5, solver=update,
                      monitor=monitor_from_spec("x0-l2:0.02,min_steps=5"), finish=Finish(mode="x0")) for bs in (3, 6)]
    assert torch.equal(watched[0].samples, watched[1].samples) and torch.equal(watched[0].nfe, watched[1].nfe)
    stopped = watched[0].nfe < free.nfe
    assert len(set(watched[0].nfe[stopped].tolist())) > 1, "samples should exit at different evaluations"
    assert bool((~stopped).any())
    assert torch.equal(watched[0].samples[~stopped], free.samples[~stopped])
