"""The DDIM core on a GPU (issue 13): throughput against diffusers and a bare loop, determinism, half precision.

GPU run, prepared for the device tool (an H200; its image lacks diffusers, pydantic, importlib_metadata and piq,
which adaptive_sampler.metrics imports):
  here, once, in the repo root (pure-Python wheels except pydantic-core; 9 MiB in all):
    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
      diffusers==0.42.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
      typing-extensions==4.16.0 importlib-metadata==10.2.0 piq==0.8.0
  then one `run` with carry [".whl"] and timeout_s 480 (the script takes about 5 minutes; sections are written to
  the JSON as they finish, so a cut-off run keeps what it measured):
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site
      .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; PYTHONUNBUFFERED=1 python3
      experiments/bench_gpu_core.py --json $OUT/bench_gpu_core.json 2>&1 | tee $OUT/log.txt
  and copy $OUT/bench_gpu_core.json to experiments/results/bench_gpu_core.json.
CPU smoke run (tiny sizes, about a minute; every code path but CUDA graphs and torch.compile):
    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench_gpu_core.py --smoke

What it measures, each section in one process and side by side (DESIGN.md rule 7):
1. checks: CUDA graphs and torch.compile(mode="reduce-overhead") against eager mode, fp16/bf16 against fp32,
   our core against the bare loop on the same noise (max |Δ| of the samples in [-1, 1]);
2. determinism: samples 0-6 at batch sizes 1, 7, 64, 256, rerun, and with half their neighbours exiting at step 3,
   per row policy, with cudnn.deterministic off and on (bitwise, or the max |Δ| to the batch-256 run);
3. host syncs: profiler counts of synchronising calls (cudaStreamSynchronize, item(), DtoH copies) in runs of 5
   and 20 steps: their difference over 15 steps is the per-step count;
4. quality: FID of float32, float16 and bfloat16 weights on the embedded model (n = 2000, 20 DDIM steps);
5. throughput (samples/s, peak GPU memory) at 10 and 50 steps of our core (default, each row policy, CUDA graphs,
   torch.compile, fp16/bf16) against diffusers' loop (DDIMPipeline; for the SD UNet its DDIMScheduler loop with
   guidance, as StableDiffusionPipeline runs it) and a bare DDIM loop, on the embedded UNet at batch 64, 256, 1024
   and on an SD 1.5-sized UNet2DConditionModel (random weights, fp16, 4x64x64 latents, batch 8, guidance 7.5).
Contenders are interleaved per repeat after a warm-up (CUDA graph capture, compilation) each; ratios are of
median times. A contender whose first timed run takes over --long-run-s seconds runs once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from harness import RESULTS, environment, save_report, timed

from adaptive_sampler.metrics.evaluation import score_samples
from adaptive_sampler.model_adapter import Conditioning, ModelAdapter
from adaptive_sampler.models import load_model
from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.policies import make_policy
from adaptive_sampler.policies.builtin import Leading
from adaptive_sampler.sampler import sample
from adaptive_sampler.seeding import draw_noise, sample_generator

SEED = 0
GUIDANCE = 7.5
# Stable Diffusion 1.5's UNet (its unet/config.json) and scheduler, written out: nothing is downloaded
SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_TEXT_LENGTH = 77
# the smoke run's stand-in: the same blocks, narrow and shallow
TINY_SD_UNET = {**SD15_UNET, "block_out_channels": [32, 32, 64, 64], "cross_attention_dim": 32, "layers_per_block": 1,
                "norm_num_groups": 8, "attention_head_dim": 2, "sample_size": 16}
SD15_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
                  "set_alpha_to_one": False, "steps_offset": 1, "num_train_timesteps": 1000,
                  "prediction_type": "epsilon", "timestep_spacing": "leading"}
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Settings:
    embedded_batches: list[int]
    steps: list[int]
    compile_batches: list[int]
    sd_unet: dict[str, Any]
    sd_batch: int
    determinism_batches: list[int]
    determinism_steps: int
    fid_n: int
    fid_steps: int
    fid_batch: int
    repeats: int

    @classmethod
    def full(cls) -> Settings:
        return cls([64, 256, 1024], [10, 50], [256], SD15_UNET, 8, [1, 7, 64, 256], 10, 2000, 20, 256, 3)

    @classmethod
    def smoke(cls) -> Settings:
        return cls([8], [2], [8], TINY_SD_UNET, 8, [1, 7, 8], 2, 136, 2, 68, 1)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max())


def _compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    return {"bitwise": bool(torch.equal(a.cpu(), b.cpu())), "max_abs_diff": _max_diff(a, b)}


# ----------------------------------------------------------------------------------------------------- contenders
Run = Callable[[int, int, int], torch.Tensor]  # (n, batch_size, steps) -> samples


@dataclass
class Task:
    """What every contender of one model runs: the network per dtype, its scheduler config, shape, conditioning."""

    networks: dict[str, torch.nn.Module]  # "fp32" / "fp16" / "bf16"
    scheduler_config: dict[str, Any]
    shape: tuple[int, ...]
    device: torch.device
    embeddings: tuple[torch.Tensor, torch.Tensor] | None = None  # (uncond, cond) [1, L, D] for guidance

    def timesteps(self, steps: int) -> torch.Tensor:
        schedule = NoiseSchedule.from_config(self.scheduler_config)
        return Leading(steps_offset=int(self.scheduler_config.get("steps_offset", 0))).timesteps(steps, schedule)

    def conditioning(self) -> Conditioning | None:
        if self.embeddings is None:
            return None
        uncond, cond = self.embeddings
        return Conditioning({"encoder_hidden_states": cond}, {"encoder_hidden_states": uncond}, GUIDANCE)

    def eps(self, dtype: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """ε̂(x, t) of the whole batch in one call, with guidance when the task has it (for the loops below)."""
        net = self.networks[dtype]
        if self.embeddings is None:
            return lambda x, t: net(x, t).sample
        uncond, cond = self.embeddings

        def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            emb = torch.cat([uncond.expand(len(x), -1, -1), cond.expand(len(x), -1, -1)])
            t = torch.cat([t, t]) if t.ndim else t
            out_u, out_c = net(torch.cat([x, x]), t, encoder_hidden_states=emb).sample.chunk(2)
            return out_u + GUIDANCE * (out_c - out_u)

        return guided


class Compiled(torch.nn.Module):
    """`torch.compile(network, mode="reduce-overhead")`: CUDA graphs whose outputs the next replay overwrites, so
    each output is cloned (the sampler keeps ε̂ across steps), as adaptive_sampler.cuda_graphs does."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.compiled = torch.compile(network, mode="reduce-overhead", dynamic=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        out = self.compiled(x, t, **kwargs)
        return (out.sample if hasattr(out, "sample") else out).clone()


def ours(task: Task, rows: str = "auto", dtype: str = "fp32", cuda_graphs: bool = False,
         compiled: bool = False) -> Run:
    network: torch.nn.Module = Compiled(task.networks[dtype]) if compiled else task.networks[dtype]
    adapter = ModelAdapter.from_diffusers(network, task.scheduler_config, network_rows=rows, cuda_graphs=cuda_graphs)
    conditioning = task.conditioning()

    def run(n: int, batch_size: int, steps: int) -> torch.Tensor:
        return sample(adapter, task.timesteps(steps), task.shape, n, batch_size=batch_size, seed=SEED,
                      conditioning=conditioning).samples

    return run


def bare(task: Task, dtype: str = "fp32", our_noise: bool = False) -> Run:
    """DDIM (Song et al. 2021, eq. 12, η = 0) over explicit (t, t_prev) pairs, x̂0 clipped as the config asks, the
    network on the whole batch in `dtype`, the state in float32, no checks: the floor. Noise from one device
    generator per batch, or our per-sample streams (`our_noise`) for the equivalence check."""
    eps_of, net_dtype = task.eps(dtype), next(task.networks[dtype].parameters()).dtype
    alphas = NoiseSchedule.from_config(task.scheduler_config).alphas_cumprod.to(task.device)
    clip = task.scheduler_config.get("clip_sample", False)

    @torch.inference_mode()
    def run(n: int, batch_size: int, steps: int) -> torch.Tensor:
        ts = task.timesteps(steps).tolist()
        out = []
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            if our_noise:
                x = draw_noise([sample_generator(SEED, i) for i in range(lo, hi)], task.shape).to(task.device)
            else:
                gen = torch.Generator(task.device).manual_seed(SEED + lo)
                x = torch.randn((hi - lo, *task.shape), generator=gen, device=task.device)
            for t, t_prev in zip(ts, ts[1:] + [-1], strict=True):
                a = alphas[t]
                a_prev = alphas[t_prev] if t_prev >= 0 else torch.ones((), device=task.device)
                eps = eps_of(x.to(net_dtype), torch.full((hi - lo,), t, device=task.device)).float()
                x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
                if clip:
                    x0 = x0.clamp(-1, 1)
                x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
            out.append(x.cpu())
        return torch.cat(out)

    return run


def diffusers_loop(task: Task, dtype: str = "fp32") -> Run:
    """diffusers' own loop: DDIMPipeline for an unconditional UNet2DModel; for a conditional UNet the denoising
    loop of StableDiffusionPipeline (DDIMScheduler.step, guidance on a doubled batch, latents in the UNet's dtype)."""
    from diffusers import DDIMPipeline, DDIMScheduler

    net = task.networks[dtype]
    net_dtype = next(net.parameters()).dtype
    scheduler = DDIMScheduler.from_config(task.scheduler_config)
    if task.embeddings is None:
        pipe = DDIMPipeline(unet=net, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)

        def run_pipeline(n: int, batch_size: int, steps: int) -> torch.Tensor:
            out = []
            for lo in range(0, n, batch_size):
                gen = torch.Generator("cpu").manual_seed(SEED + lo)
                (images,) = pipe(batch_size=min(batch_size, n - lo), generator=gen, eta=0.0,
                                 num_inference_steps=steps, output_type="np", return_dict=False)
                out.append(torch.from_numpy(images))
            return torch.cat(out)

        return run_pipeline
    eps_of = task.eps(dtype)

    @torch.inference_mode()
    def run_loop(n: int, batch_size: int, steps: int) -> torch.Tensor:
        scheduler.set_timesteps(steps, device=task.device)
        out = []
        for lo in range(0, n, batch_size):
            gen = torch.Generator(task.device).manual_seed(SEED + lo)
            latents = torch.randn((min(batch_size, n - lo), *task.shape), generator=gen, device=task.device,
                                  dtype=net_dtype) * scheduler.init_noise_sigma
            for t in scheduler.timesteps:
                eps = eps_of(scheduler.scale_model_input(latents, t), t)
                latents = scheduler.step(eps, t, latents, eta=0.0).prev_sample
            out.append(latents.cpu())
        return torch.cat(out)

    return run_loop


def embedded_task(device: torch.device) -> Task:
    nets = {"fp32": load_model("embedded", device=device).network}
    for name, dtype in HALF.items():
        nets[name] = load_model("embedded", device=device, dtype=dtype).network
    return Task(nets, load_model("embedded").scheduler_config, (1, 32, 32), device)


def sd_task(config: dict[str, Any], device: torch.device) -> Task:
    """An SD-shaped UNet2DConditionModel with random weights (built in fp16 on the device), prompt embeddings of
    random values: throughput does not depend on the weights' values."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(SEED)
    with torch.device(device):
        unet = UNet2DConditionModel(**config).half().eval().requires_grad_(False)
    width = config["cross_attention_dim"]
    gen = torch.Generator(device).manual_seed(SEED)
    uncond, cond = (torch.randn((1, SD15_TEXT_LENGTH, width), generator=gen, device=device, dtype=torch.float16)
                    for _ in range(2))
    size = config["sample_size"]
    return Task({"fp16": unet}, dict(SD15_SCHEDULER), (4, size, size), device, (uncond, cond))


# --------------------------------------------------------------------------------------------------------- timing
def time_cell(runs: dict[str, Run], device: torch.device, n: int, batch_size: int, steps: int, repeats: int,
              long_run_s: float) -> dict[str, Any]:
    """Interleaved timed runs of every contender after one warm-up each (2 steps at the full batch: captures the
    graphs and compiles for its bucket); samples/s, and on CUDA the peak memory allocated during a run."""
    result: dict[str, dict[str, Any]] = {}
    for name, run in runs.items():
        try:
            _, warmup_s = timed(device, run, n, batch_size, min(steps, 2))
            result[name] = {"warmup_s": warmup_s, "times_s": [], "peak_mib": None}
        except Exception as exc:  # noqa: BLE001 (one failing contender must not end a one-shot GPU run)
            result[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            print(f"    {name}: FAILED {result[name]['error']}", flush=True)
    live = [k for k in runs if "error" not in result[k]]
    for r in range(repeats):
        for name in live:
            entry = result[name]
            if r > 0 and entry["times_s"][0] > long_run_s:
                continue
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            entry["times_s"].append(timed(device, runs[name], n, batch_size, steps)[1])
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) / 2**20
                entry["peak_mib"] = max(entry["peak_mib"] or 0.0, peak)
                entry["peak_over_start_mib"] = peak - base / 2**20
    for name in live:
        entry = result[name]
        entry["median_s"] = statistics.median(entry["times_s"])
        entry["samples_per_s"] = n / entry["median_s"]
    ratios = {}
    for ref in ("diffusers", "bare"):
        if ref not in live:
            continue
        for name in live:
            if name.startswith("ours"):
                ratios[f"{name} / {ref} throughput"] = result[ref]["median_s"] / result[name]["median_s"]
    print(f"  batch {batch_size}, {steps} steps: " + "  ".join(
        f"{k} {result[k]['samples_per_s']:.0f}/s" for k in live), flush=True)
    return {"batch_size": batch_size, "n": n, "steps": steps, "contenders": result, "ratios": ratios}


def embedded_contenders(task: Task, batch_size: int, settings: Settings) -> dict[str, Run]:
    cuda = task.device.type == "cuda"
    default = str(ModelAdapter(task.networks["fp32"], NoiseSchedule.from_config(task.scheduler_config)).row_policy)
    runs = {f"ours default ({default})": ours(task)}
    for rows in ("buckets:8", "fixed:8", "all"):
        if rows != default:
            runs[f"ours {rows}"] = ours(task, rows)
    if cuda:
        runs["ours buckets + cuda graphs"] = ours(task, "buckets", cuda_graphs=True)
        if batch_size in settings.compile_batches:
            runs["ours buckets + torch.compile"] = ours(task, "buckets", compiled=True)
    for half in HALF:
        runs[f"ours default {half}"] = ours(task, dtype=half)
    if cuda:
        runs["ours buckets + cuda graphs fp16"] = ours(task, "buckets", "fp16", cuda_graphs=True)
    runs["diffusers"] = diffusers_loop(task)
    runs["bare"] = bare(task)
    return runs


def sd_contenders(task: Task) -> dict[str, Run]:
    runs = {"ours default fp16": ours(task, dtype="fp16"), "ours fixed:8 fp16": ours(task, "fixed:8", "fp16"),
            "ours all fp16": ours(task, "all", "fp16")}
    if task.device.type == "cuda":
        runs["ours buckets + cuda graphs fp16"] = ours(task, "buckets", "fp16", cuda_graphs=True)
    runs["diffusers"] = diffusers_loop(task, "fp16")
    runs["bare"] = bare(task, "fp16")
    return runs


# ------------------------------------------------------------------------------------------------------- sections
def checks(task: Task, sd: Task, settings: Settings) -> dict[str, Any]:
    """Max |Δ| between ways of computing the same samples (one batch of the first embedded batch size)."""
    n = batch = settings.embedded_batches[0] if task.device.type != "cuda" else 64
    steps = settings.steps[0]
    eager = ours(task, "buckets")(n, batch, steps)
    out: dict[str, Any] = {"batch": batch, "steps": steps,
                           "ours_all_vs_bare_same_noise": _max_diff(ours(task, "all")(n, batch, steps),
                                                                    bare(task, our_noise=True)(n, batch, steps))}
    for name in HALF:
        out[f"{name}_vs_fp32"] = _max_diff(ours(task, "buckets", name)(n, batch, steps), eager)
    if task.device.type != "cuda":
        out["cuda_graphs_vs_eager"] = out["compile_vs_eager"] = "skipped: needs CUDA"
        return out
    for key, run in (("cuda_graphs_vs_eager", ours(task, "buckets", cuda_graphs=True)),
                     ("compile_vs_eager", ours(task, "buckets", compiled=True))):
        try:
            out[key] = _compare(run(n, batch, steps), eager)
        except Exception as exc:  # noqa: BLE001
            out[key] = f"error: {type(exc).__name__}: {exc}"[:500]
    sd_eager = ours(sd, "buckets", "fp16")(2, 2, steps)
    try:
        out["sd_cuda_graphs_vs_eager_fp16"] = _compare(ours(sd, "buckets", "fp16", cuda_graphs=True)(2, 2, steps),
                                                       sd_eager)
    except Exception as exc:  # noqa: BLE001
        out["sd_cuda_graphs_vs_eager_fp16"] = f"error: {type(exc).__name__}: {exc}"[:500]
    return out


def determinism(task: Task, settings: Settings) -> dict[str, Any]:
    """Samples 0-6 in runs of each batch size, a rerun, and a run where the odd samples exit at step 3, against
    the largest batch's run; per row policy and cudnn.deterministic setting."""
    sizes, steps, k = settings.determinism_batches, settings.determinism_steps, 7
    largest = max(sizes)
    ts = task.timesteps(steps)

    def odd_exit(info: Any) -> torch.Tensor | None:
        return (info.sample_indices % 2 == 1).to(info.t.device) if info.step == min(3, steps - 1) else None

    out: dict[str, Any] = {"samples": list(range(k)), "steps": steps,
                           "exits": "odd samples end at step 3 (x0); the even ones are compared"}
    saved = torch.backends.cudnn.deterministic
    for rows in ("buckets", "fixed:8", "all"):
        for deterministic in (False, True):
            torch.backends.cudnn.deterministic = deterministic
            adapter = ModelAdapter.from_diffusers(task.networks["fp32"], task.scheduler_config, network_rows=rows)

            def draw(n: int, batch_size: int, monitor: Any = None, a: ModelAdapter = adapter) -> torch.Tensor:
                return sample(a, ts, task.shape, n, batch_size=batch_size, seed=SEED, monitor=monitor).samples[:k]

            reference = draw(largest, largest)
            entry: dict[str, Any] = {f"batch_{bs}": _compare(draw(max(bs, k), bs), reference)
                                     for bs in sizes if bs != largest}
            entry[f"rerun_batch_{largest}"] = _compare(draw(largest, largest), reference)
            even = [i for i in range(k) if i % 2 == 0]
            entry[f"neighbours_exit_batch_{largest}"] = _compare(draw(largest, largest, odd_exit)[even],
                                                                 reference[even])
            entry["all_bitwise"] = all(v["bitwise"] for v in entry.values())
            out[f"{rows} cudnn.deterministic={deterministic}"] = entry
            print(f"  {rows:<8} deterministic={deterministic!s:<5} all bitwise: {entry['all_bitwise']}  max |Δ| "
                  f"{max(v['max_abs_diff'] for v in entry.values() if isinstance(v, dict)):.2e}", flush=True)
    torch.backends.cudnn.deterministic = saved
    return out


def host_syncs(task: Task, batch: int) -> dict[str, Any]:
    """Synchronising calls in runs of 5 and 20 steps of one batch: the difference / 15 is the count per step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if task.device.type == "cuda" else [])
    names = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "Memcpy DtoH",
             "aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero")
    variants = {"ours default": ours(task), "ours fixed:8": ours(task, "fixed:8")}
    if task.device.type == "cuda":
        variants["ours buckets + cuda graphs"] = ours(task, "buckets", cuda_graphs=True)
    out: dict[str, Any] = {"batch": batch, "counted": list(names)}
    for label, run in variants.items():
        counts = {}
        run(batch, batch, 2)  # warm-up (and graph capture) outside the profile
        for steps in (5, 20):
            with profile(activities=activities) as prof:
                run(batch, batch, steps)
            counts[steps] = {name: sum(1 for e in prof.events() if name in e.name) for name in names}
        per_step = {name: (counts[20][name] - counts[5][name]) / 15 for name in names}
        out[label] = {"steps_5": counts[5], "steps_20": counts[20], "per_step": per_step}
        print(f"  {label}: per-step syncs {sum(per_step.values()):.2f} ({counts[20]})", flush=True)
    return out


def quality(task: Task, settings: Settings) -> dict[str, Any]:
    """FID against the Fashion-MNIST test set of fp32, fp16 and bf16 weights, same noise, default row policy."""
    out: dict[str, Any] = {"n": settings.fid_n, "steps": settings.fid_steps, "policy": "uniform", "seed": SEED}
    fp32_samples = None
    for name in ("fp32", *HALF):
        adapter = ModelAdapter.from_diffusers(task.networks[name], task.scheduler_config)
        ts = make_policy("uniform").timesteps(settings.fid_steps, adapter.schedule)
        samples = sample(adapter, ts, task.shape, settings.fid_n, batch_size=settings.fid_batch, seed=SEED).samples
        fid = score_samples(samples).fid
        out[name] = {"fid": fid}
        if fp32_samples is None:
            fp32_samples = samples
        else:
            out[name]["fid_over_fp32"] = fid / out["fp32"]["fid"]
            out[name]["max_abs_diff_to_fp32"] = _max_diff(samples, fp32_samples)
            out[name]["mean_abs_diff_to_fp32"] = float((samples - fp32_samples).abs().mean())
        print(f"  {name}: FID {fid:.3f}", flush=True)
    return out


def goals(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals, read off the measured sections (None where a section is missing)."""
    out: dict[str, Any] = {}
    for cell in report.get("throughput_embedded", []):
        if cell["batch_size"] == 256:
            best = max((v["samples_per_s"], k) for k, v in cell["contenders"].items()
                       if k.startswith("ours") and "samples_per_s" in v)
            pipeline = cell["contenders"].get("diffusers", {}).get("samples_per_s")
            default = next((v for k, v in cell["ratios"].items()
                            if k.startswith("ours default (") and k.endswith(" / diffusers throughput")), None)
            out[f"embedded_256_{cell['steps']}_steps"] = {
                "best_ours": best[1], "best_ours_over_diffusers": best[0] / pipeline if pipeline else None,
                "default_over_diffusers": default, "goal": ">= 1.5"}
    for cell in report.get("throughput_sd15", []):
        ratio = cell["ratios"].get("ours default fp16 / bare throughput")
        out[f"sd15_{cell['steps']}_steps_default_overhead_over_bare_pct"] = (
            None if ratio is None else (1 / ratio - 1) * 100)
    det = report.get("determinism", {})
    if det:
        out["bitwise_across_batches_and_exits"] = {k: v["all_bitwise"] for k, v in det.items()
                                                   if isinstance(v, dict) and "all_bitwise" in v}
    fid = report.get("quality")
    if fid:
        out["fp16_fid_over_fp32"] = fid["fp16"]["fid_over_fp32"]
        out["bf16_fid_over_fp32"] = fid["bf16"]["fid_over_fp32"]
    return out


# ----------------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any device (CPU: about a minute)")
    parser.add_argument("--json", type=Path, default=None,
                        help="default: experiments/results/bench_gpu_core.json (--smoke: bench_gpu_core_smoke.json)")
    parser.add_argument("--long-run-s", type=float, default=4.0, help="a contender slower than this runs once")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["checks", "determinism", "host_syncs", "quality", "sd15", "embedded"])
    args = parser.parse_args()
    settings = Settings.smoke() if args.smoke else Settings.full()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        parser.error("the full run needs a CUDA device; use --smoke on CPU")
    path = args.json or RESULTS / ("bench_gpu_core_smoke.json" if args.smoke else "bench_gpu_core.json")
    start = time.perf_counter()
    report: dict[str, Any] = {"settings": {**settings.__dict__, "sd_unet": settings.sd_unet,
                                           "sd_scheduler": SD15_SCHEDULER, "guidance_scale": GUIDANCE,
                                           "smoke": args.smoke, "seed": SEED, "eta": 0.0,
                                           "timesteps": "leading spacing (diffusers' DDIM default for these configs)",
                                           "long_run_s": args.long_run_s},
                              "environment": environment(device)}

    def save(section: str, value: Any) -> None:
        report[section] = value
        report["goals"] = goals(report)
        report["wall_s"] = time.perf_counter() - start
        save_report(path, report)
        print(f"[{report['wall_s']:.0f} s] {section} written to {path}", flush=True)

    print(f"device {device} ({report['environment']['gpu']}), torch {torch.__version__}", flush=True)
    embedded = embedded_task(device)
    sd = sd_task(settings.sd_unet, device)
    for section, work in (("checks", lambda: checks(embedded, sd, settings)),
                          ("determinism", lambda: determinism(embedded, settings)),
                          ("host_syncs", lambda: host_syncs(embedded, 64 if device.type == "cuda" else
                                                            settings.embedded_batches[0])),
                          ("quality", lambda: quality(embedded, settings))):
        if section not in args.skip:
            print(section, flush=True)
            save(section, work())
    if "sd15" not in args.skip:
        print("throughput_sd15", flush=True)
        runs = sd_contenders(sd)
        save("throughput_sd15", [time_cell(runs, device, settings.sd_batch, settings.sd_batch, steps, settings.repeats,
                                           args.long_run_s) for steps in settings.steps])
    if "embedded" not in args.skip:
        print("throughput_embedded", flush=True)
        cells = []
        for batch in settings.embedded_batches:
            runs = embedded_contenders(embedded, batch, settings)
            for steps in settings.steps:
                cells.append(time_cell(runs, device, batch, batch, steps, settings.repeats, args.long_run_s))
                save("throughput_embedded", cells)
    print(json.dumps(report["goals"], indent=2))


if __name__ == "__main__":
    main()
