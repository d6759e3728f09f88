"""Row policies of the network calls (fixed chunks, power-of-two buckets, all rows) and half-precision networks:
spec parsing and errors, bucket choice, padding, outputs equal to the unpadded call, bitwise sameness of a sample
in any batch that lands in its bucket, the sampler's batch bounding a bucket, CUDA graphs refused off CUDA, and
bfloat16/float16 weights with a float32 sampler state."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from adaptive_sampler import load_model, make_policy
from adaptive_sampler.errors import FieldError
from adaptive_sampler.finish import Finish
from adaptive_sampler.model_adapter import (
    Conditioning,
    ModelAdapter,
    NetworkCall,
    RowPolicy,
    network_dtype,
)
from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.sampler import sample
from helpers import TINY_SHAPE, RowCounter, build_tiny_conditional_unet, run_cli

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device name only: nothing here runs on CUDA
TS = list(range(900, -1, -100))
SCHEDULE = NoiseSchedule.from_config({"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02})


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("spec", "device", "expected"), [
    ("auto", CPU, RowPolicy("fixed", 8)),
    ("auto", CUDA, RowPolicy("buckets", 8)),
    (8, CUDA, RowPolicy("fixed", 8)),  # an integer is the explicit override on any device
    (3, CPU, RowPolicy("fixed", 3)),
    (None, CPU, RowPolicy("all")),
    ("all", CUDA, RowPolicy("all")),
    ("buckets", CPU, RowPolicy("buckets", 8)),
    ("buckets:32", CPU, RowPolicy("buckets", 32)),
    ("fixed:16", CUDA, RowPolicy("fixed", 16)),
    (RowPolicy("buckets", 4), CPU, RowPolicy("buckets", 4)),
])
def test_row_specs_parse(spec, device, expected):
    assert RowPolicy.parse(spec, device) == expected


def test_row_policies_print_as_their_spec():
    assert [str(RowPolicy.parse(s, CPU)) for s in ("auto", "buckets", "all", 5)] == [
        "fixed:8", "buckets:8", "all", "fixed:5"]


@pytest.mark.parametrize("spec", [0, -1, True, "fixed", "fixed:0", "fixed:x", "buckets:", "all:3", "bucket", "", 2.5])
def test_bad_row_specs_raise_field_error_naming_network_rows(spec):
    with pytest.raises(FieldError) as caught:
        ModelAdapter(lambda x, t: x, SCHEDULE, network_rows=spec)
    assert caught.value.field == "network_rows"
    assert "auto, all, buckets[:MIN], fixed:N" in str(caught.value)


def test_the_cpu_default_is_fixed_chunks_of_eight(tiny_unet, tiny_config):
    assert ModelAdapter.from_diffusers(tiny_unet, tiny_config).row_policy == RowPolicy("fixed", 8)


@pytest.mark.parametrize(("rows", "capacity", "bucket"), [
    (1, None, 8), (8, None, 8), (9, None, 16), (16, None, 16), (17, None, 32), (300, None, 512),
    (100, 256, 128), (200, 256, 256), (256, 256, 256),
    (100, 100, 100), (65, 100, 100), (64, 100, 64),  # a batch that is no power of two is its own top bucket
    (1, 1, 1), (3, 7, 7), (2, 2, 2),  # batches below the smallest bucket are never padded beyond themselves
])
def test_bucket_is_the_next_power_of_two_within_smallest_and_batch(rows, capacity, bucket):
    assert RowPolicy("buckets").bucket(rows, capacity) == bucket


def test_calls_of_each_policy():
    assert RowPolicy("fixed", 4).calls(10) == [NetworkCall(0, 4, 4), NetworkCall(4, 4, 4), NetworkCall(8, 2, 4)]
    assert RowPolicy("buckets").calls(10, capacity=64) == [NetworkCall(0, 10, 16)]
    assert RowPolicy("buckets", 4).calls(3) == [NetworkCall(0, 3, 4)]
    assert RowPolicy("all").calls(10, capacity=64) == [NetworkCall(0, 10, 10)]
    assert RowPolicy("buckets").calls(0) == RowPolicy("fixed").calls(0) == []


# ---------------------------------------------------------------- padding and outputs


def row_independent(x, t, *, emb):
    return torch.sin(x) * (t.view(-1, 1, 1, 1) + 1) + emb.sum(1).view(-1, 1, 1, 1)


@pytest.mark.parametrize(("spec", "n", "capacity", "shapes"), [
    ("buckets", 5, None, [8]), ("buckets", 5, 6, [6]), ("buckets", 11, 64, [16]), ("buckets:4", 3, None, [4]),
    ("fixed:4", 10, 64, [4, 4, 4]), ("all", 5, 64, [5]),
])
def test_the_network_sees_the_padded_rows_and_the_real_rows_come_back_unchanged(spec, n, capacity, shapes):
    seen = []

    def network(x, t, *, emb):
        seen.append((x.shape[0], t.shape[0], emb.shape[0]))
        return row_independent(x, t, emb=emb)

    x, emb = _randn(n, 2, 3, 3, seed=5), _randn(n, 4, seed=7)
    t = torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(6))
    out = ModelAdapter(network, SCHEDULE, network_rows=spec).network_output(x, t, {"emb": emb}, capacity)
    assert seen == [(rows, rows, rows) for rows in shapes]
    assert torch.equal(out, row_independent(x, t, emb=emb))


@pytest.mark.parametrize("spec", ["buckets", "fixed:8", "fixed:3"])
def test_a_unet_row_equals_its_unpadded_call_within_float_tolerance(tiny_unet, tiny_config, spec):
    x = _randn(11, *TINY_SHAPE, seed=1)
    t = torch.linspace(999, 0, 11).long()
    alone = ModelAdapter.from_diffusers(tiny_unet, tiny_config, network_rows=None).network_output(x, t, {})
    padded = ModelAdapter.from_diffusers(tiny_unet, tiny_config, network_rows=spec).network_output(x, t, {})
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)


def test_in_bucket_mode_a_row_is_bitwise_the_same_in_any_batch_of_its_bucket(tiny_unet, tiny_config):
    """9 to 16 active rows all run as 16: row i's output does not depend on how many rows, or which, share it."""
    adapter = ModelAdapter.from_diffusers(tiny_unet, tiny_config, network_rows="buckets")
    x = _randn(16, *TINY_SHAPE, seed=2)
    t = torch.linspace(999, 0, 16).long()
    full = adapter.network_output(x, t, {}, capacity=16)
    for rows in (9, 12, 15):
        part = adapter.network_output(x[:rows], t[:rows], {}, capacity=16)
        assert torch.equal(part, full[:rows]), rows
    other = torch.cat([x[:9], _randn(3, *TINY_SHAPE, seed=3)])  # other neighbours, same bucket
    assert torch.equal(adapter.network_output(other, t[:12], {}, capacity=16)[:9], full[:9])


def test_in_bucket_mode_a_sample_is_bitwise_unchanged_when_neighbours_exit_within_its_bucket(tiny_unet,
                                                                                              tiny_config):
    adapter = ModelAdapter.from_diffusers(tiny_unet, tiny_config, network_rows="buckets")
    alone = sample(adapter, TS, TINY_SHAPE, 16, batch_size=16, seed=4).samples

    def exit_four(info):  # 16 -> 12 active rows: still the bucket of 16
        return torch.tensor([i % 4 == 0 for i in info.sample_indices.tolist()]) if info.step == 3 else None

    exits = sample(adapter, TS, TINY_SHAPE, 16, batch_size=16, seed=4, monitor=exit_four,
                   finish=Finish(mode="x0")).samples
    stayed = [i for i in range(16) if i % 4]
    assert torch.equal(exits[stayed], alone[stayed])
    assert not torch.equal(exits[0], alone[0])


def test_the_sampler_bounds_each_bucket_by_its_batch_and_exits_shrink_the_calls(tiny_unet, tiny_config):
    network = RowCounter(tiny_unet)
    seen = network.rows
    adapter = ModelAdapter.from_diffusers(network, tiny_config, network_rows="buckets")
    sample(adapter, TS[:3], TINY_SHAPE, 5, batch_size=5)
    assert seen == [5, 5, 5]  # a batch of 5 is never padded to 8
    seen.clear()

    def exit_some(info):  # rows leave: 20 -> 13 after the first step, -> 6 after the second
        return torch.tensor([i % 3 == info.step for i in info.sample_indices.tolist()]) if info.step < 2 else None

    sample(adapter, TS[:4], TINY_SHAPE, 20, batch_size=20, monitor=exit_some, finish=Finish(mode="x0"))
    assert seen == [20, 16, 8, 8]


def test_guidance_doubles_the_rows_and_the_bucket_bound(tiny_config):
    unet = build_tiny_conditional_unet()
    network = RowCounter(unet)
    seen = network.rows
    cond, uncond = _randn(3, 5, 16, seed=8), _randn(1, 5, 16, seed=9)
    conditioning = Conditioning({"encoder_hidden_states": cond}, {"encoder_hidden_states": uncond}, 7.5)
    bucketed = ModelAdapter.from_diffusers(network, tiny_config, network_rows="buckets")
    x, t = _randn(3, 4, 8, 8, seed=10), torch.tensor([999, 500, 1])
    bucketed(x, t, conditioning.select(torch.arange(3)), capacity=3)
    bucketed(x[:2], t[:2], conditioning.select(torch.arange(2)), capacity=3)
    assert seen == [6, 6]  # uncond + cond rows, bounded by twice the batch
    reference = ModelAdapter.from_diffusers(unet, tiny_config, network_rows=None)(x, t, conditioning.select(
        torch.arange(3)))
    padded = bucketed(x, t, conditioning.select(torch.arange(3)))
    assert seen[-1] == 8  # no batch known: the smallest bucket
    torch.testing.assert_close(padded.eps, reference.eps, rtol=1e-5, atol=1e-5)


def test_cuda_graphs_are_refused_off_cuda(tiny_unet, tiny_config):
    with pytest.raises(FieldError, match=r"^cuda_graphs: True needs a network on a CUDA device; this one is on cpu"):
        ModelAdapter.from_diffusers(tiny_unet, tiny_config, cuda_graphs=True)


# ---------------------------------------------------------------- half-precision networks


def test_network_dtype_names():
    assert network_dtype("bfloat16") is torch.bfloat16 and network_dtype(torch.float16) is torch.float16
    assert network_dtype("float32") is torch.float32
    for bad in ("float64", "fp16", torch.int8):
        with pytest.raises(FieldError, match=r"^dtype: .* is not one of float32, float16, bfloat16") as caught:
            network_dtype(bad)
        assert caught.value.field == "dtype"


@pytest.fixture(scope="module")
def embedded():
    return load_model("embedded")


@pytest.mark.parametrize(("dtype", "mean_tol", "max_tol"), [(torch.bfloat16, 0.02, 0.3), (torch.float16, 0.01, 0.2)])
def test_half_precision_weights_keep_a_float32_sampler_close_to_float32(embedded, dtype, mean_tol, max_tol):
    """The trained embedded model, 10 DDIM steps: measured here, mean |Δ| 0.005 / max 0.09 for bfloat16 and
    0.002 / 0.05 for float16 in the [-1, 1] range (the tolerances are a few times that)."""
    ts = make_policy("uniform").timesteps(10, embedded.adapter().schedule)
    full = sample(embedded.adapter(), ts, embedded.sample_shape, 8, seed=0).samples
    half_adapter = ModelAdapter.from_diffusers(copy.deepcopy(embedded.network).to(dtype), embedded.scheduler_config)
    assert half_adapter.network_dtype == dtype and half_adapter.dtype == torch.float32
    pred = half_adapter(_randn(2, *embedded.sample_shape, seed=0), torch.tensor([999, 10]))
    assert pred.eps.dtype == pred.x0.dtype == torch.float32
    half = sample(half_adapter, ts, embedded.sample_shape, 8, seed=0).samples
    assert half.dtype == torch.float32 and not torch.equal(half, full)
    difference = (half - full).abs()
    assert float(difference.mean()) < mean_tol and float(difference.max()) < max_tol


def test_half_precision_networks_get_their_conditioning_in_their_dtype(tiny_config):
    unet = build_tiny_conditional_unet().to(torch.bfloat16)
    cond = _randn(2, 5, 16, seed=8)  # float32, as a text encoder returns it
    pred = ModelAdapter.from_diffusers(unet, tiny_config)(_randn(2, 4, 8, 8, seed=1), torch.tensor([999, 10]),
                                                          Conditioning({"encoder_hidden_states": cond}))
    assert pred.eps.dtype == torch.float32 and bool(torch.isfinite(pred.eps).all())


def test_load_model_puts_the_weights_in_the_asked_dtype(tiny_model_dir):
    for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16), ("float32", torch.float32)):
        model = load_model(tiny_model_dir, dtype=name)
        assert {p.dtype for p in model.network.parameters()} == {dtype}
        assert model.adapter().network_dtype == dtype and model.adapter().dtype == torch.float32
    with pytest.raises(FieldError, match=r"^dtype: 'half' is not one of float32, float16, bfloat16"):
        load_model(tiny_model_dir, dtype="half")


def test_the_cli_samples_with_bfloat16_weights_and_names_the_flag_of_a_bad_dtype(tiny_model_dir, tmp_path):
    from adaptive_sampler.model_adapter import NETWORK_DTYPES
    from adaptive_sampler.options import DTYPE_NAMES

    assert DTYPE_NAMES == tuple(NETWORK_DTYPES)
    report = tmp_path / "run.json"
    args = ["sample", "--model", tiny_model_dir, "--steps", 3, "--n", 2, "--device", "cpu"]
    run = run_cli(*args, "--dtype", "bfloat16", "--json", report, "--save", tmp_path / "s.npy")
    assert run.code == 0, run.err
    assert json.loads(report.read_text())["dtype"] == "bfloat16"
    bad = run_cli(*args, "--dtype", "half")
    assert bad.code != 0 and bad.err_lines[-1].startswith("error: --dtype: 'half' is not one of float32, float16")


def test_a_row_policy_built_directly_is_checked_too():
    for kind, size in (("bogus", 8), ("fixed", 0), ("buckets", -2)):
        with pytest.raises(FieldError) as caught:
            RowPolicy(kind, size)  # type: ignore[arg-type]
        assert caught.value.field == "network_rows"


# ---------------------------------------------------------------- the --network-rows flag


@pytest.mark.parametrize("flag", ["auto", "buckets", "buckets:4", "fixed:4", "all", "0", "8"])
def test_network_rows_flag_takes_every_row_policy(tiny_model_dir, tmp_path, flag):
    from helpers import run_cli

    run = run_cli("sample", "--model", tiny_model_dir, "--steps", 2, "--n", 3, "--network-rows", flag,
                  "--out", tmp_path / "g.png", "--json", tmp_path / "r.json")
    assert run.code == 0, run.err


@pytest.mark.parametrize(("command", "flag", "rule"), [
    ("sample", "bogus", "is not a row policy"), ("sample", "4097", "is outside [0, 4096]"),
    ("sample", "fixed:5000", "has a size above 4096"), ("eval", "buckets:0", "is not a row policy"),
    ("tune", "nope", "is not a row policy")])
def test_a_bad_network_rows_flag_names_it(tiny_model_dir, tmp_path, command, flag, rule):
    from helpers import run_cli

    extra = ["--trials", 1, "--storage", tmp_path / "t.journal", "--cache-dir", tmp_path] if command == "tune" else []
    run = run_cli(command, "--model", tiny_model_dir, "--steps", 2, "--network-rows", flag, *extra)
    assert run.code == 2 and "--network-rows" in run.err and rule in run.err, run.err
