"""Throughput of the DDIM core against diffusers' DDIMPipeline and a bare DDIM loop, measured side by side.

One run, one UNet (the embedded Fashion-MNIST UNet2DModel), one step count and batch size. The contenders are
interleaved per repeat (A, B, C, D, A, B, C, D, ...) so that the noise of a shared machine hits all of them, and
every ratio is taken per repeat (paired) before the median (DESIGN.md rule 7):

  (a) diffusers `DDIMPipeline` (DDIMScheduler from the embedded scheduler config, timestep_spacing="leading",
      eta=0, output_type="pt", seeded CPU generator per batch);
  (b) a bare hand-written DDIM loop (eq. 12 of Song et al. 2021 over explicit (t, t_prev) pairs, the UNet on the
      whole batch, torch.inference_mode, no callbacks, no checks): the floor;
  (c) `adaptive_sampler.sampler.sample` with network_rows=None (unbucketed);
  (d) `adaptive_sampler.sampler.sample` with the default network_rows=8 (bitwise batch-size invariance).

All four walk the same timesteps (the "leading" spacing of the embedded config, which our `Leading` policy
reproduces; the script checks that the lists are equal) and clip x̂0 to [-1, 1] as the config asks.
Peak memory: torch.cuda.max_memory_allocated on GPU; on CPU the peak RSS of one run of each contender in its own
subprocess (ru_maxrss from os.wait4 of that child), with the RSS after model load reported alongside.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench_throughput.py --json experiments/results/bench_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from harness import environment, markdown_table, pick_device, save_report, sync, timed

from adaptive_sampler.model_adapter import ModelAdapter
from adaptive_sampler.models import LoadedModel, load_model
from adaptive_sampler.policies.builtin import Leading
from adaptive_sampler.sampler import sample
from adaptive_sampler.seeding import draw_noise, sample_generator

NAMES = {
    "a": "diffusers DDIMPipeline",
    "b": "bare DDIM loop",
    "c": "ours, network_rows=None",
    "d": "ours, network_rows=8",
}
SEED = 0


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


# ----------------------------------------------------------------------------------------------------------- contenders
def make_pipeline(model: LoadedModel, device: torch.device) -> Callable[[int, int, int], torch.Tensor]:
    from diffusers import DDIMPipeline, DDIMScheduler

    scheduler = DDIMScheduler.from_config(model.scheduler_config, timestep_spacing="leading")
    pipe = DDIMPipeline(unet=model.network, scheduler=scheduler).to(device)
    pipe.set_progress_bar_config(disable=True)

    def run(n: int, batch_size: int, steps: int) -> torch.Tensor:
        out = []
        for b, (lo, hi) in enumerate(_batches(n, batch_size)):
            generator = torch.Generator("cpu").manual_seed(SEED + b)
            (images,) = pipe(batch_size=hi - lo, generator=generator, eta=0.0, num_inference_steps=steps,
                             output_type="pt", return_dict=False)
            out.append(images)
        return torch.cat(out)

    return run


def make_bare(model: LoadedModel, device: torch.device, noise: Callable[[int, int, int], torch.Tensor] | None = None,
              network: Callable[..., Any] | None = None) -> Callable[[int, int, int], torch.Tensor]:
    """DDIM eq. 12 with η = 0: x_prev = sqrt(ᾱ_prev)·clip(x̂0) + sqrt(1 - ᾱ_prev)·ε̂, x̂0 = (x - sqrt(1-ᾱ_t)·ε̂)/sqrt(ᾱ_t).

    Noise as DDIMPipeline draws it (one CPU generator per batch, seeded SEED + batch index) unless `noise`
    (batch index, lo, hi) -> x_T is given. `network` replaces the model's UNet (the stub of the overhead run).
    """
    net, shape = network if network is not None else model.network, model.sample_shape
    alphas_cumprod = model.adapter().schedule.alphas_cumprod
    clip = bool(model.scheduler_config.get("clip_sample", False))
    clip_range = float(model.scheduler_config.get("clip_sample_range", 1.0))
    plans: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]] = {}

    def plan(steps: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        if steps not in plans:
            ts = bench_timesteps(model, steps).tolist()
            pairs = []
            for t, t_prev in zip(ts, ts[1:] + [-1], strict=True):
                a = alphas_cumprod[t]
                a_prev = alphas_cumprod[t_prev] if t_prev >= 0 else torch.tensor(1.0)
                pairs.append(tuple(v.to(device) for v in (torch.tensor(t), (1 - a).sqrt(), a.sqrt(), a_prev.sqrt(),
                                                            (1 - a_prev).sqrt())))
            plans[steps] = pairs
        return plans[steps]

    @torch.inference_mode()
    def run(n: int, batch_size: int, steps: int) -> torch.Tensor:
        pairs, out = plan(steps), []
        for b, (lo, hi) in enumerate(_batches(n, batch_size)):
            if noise is None:
                x = torch.randn((hi - lo, *shape), generator=torch.Generator("cpu").manual_seed(SEED + b))
            else:
                x = noise(b, lo, hi)
            x = x.to(device)
            for t, sqrt_1ma, sqrt_a, sqrt_a_prev, sqrt_1ma_prev in pairs:
                eps = net(x, t).sample
                x0 = (x - sqrt_1ma * eps) / sqrt_a
                if clip:
                    x0 = x0.clamp(-clip_range, clip_range)
                x = sqrt_a_prev * x0 + sqrt_1ma_prev * eps
            out.append(x)
        return torch.cat(out)

    return run


def make_ours(model: LoadedModel, network_rows: int | None,
              network: torch.nn.Module | None = None) -> Callable[[int, int, int], torch.Tensor]:
    adapter = (model.adapter(network_rows=network_rows) if network is None else
               ModelAdapter.from_diffusers(network, model.scheduler_config, network_rows=network_rows))

    def run(n: int, batch_size: int, steps: int) -> torch.Tensor:
        ts = bench_timesteps(model, steps)
        return sample(adapter, ts, model.sample_shape, n, batch_size=batch_size, seed=SEED, eta=0.0).samples

    return run


def bench_timesteps(model: LoadedModel, steps: int) -> torch.Tensor:
    offset = int(model.scheduler_config.get("steps_offset", 0))
    return Leading(steps_offset=offset).timesteps(steps, model.adapter().schedule)


def make_contenders(model: LoadedModel, device: torch.device) -> dict[str, Callable[[int, int, int], torch.Tensor]]:
    return {"a": make_pipeline(model, device), "b": make_bare(model, device),
            "c": make_ours(model, None), "d": make_ours(model, 8)}


# -------------------------------------------------------------------------------------------------------------- checks
def check_equivalence(model: LoadedModel, device: torch.device, steps: int) -> dict[str, float]:
    """Untimed sanity check on 8 samples: same timesteps, same results (max |Δ| in the [-1, 1] output range)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(model.scheduler_config, timestep_spacing="leading")
    scheduler.set_timesteps(steps)
    ours_ts = bench_timesteps(model, steps)
    if scheduler.timesteps.tolist() != ours_ts.tolist():
        raise RuntimeError(f"timesteps differ: diffusers {scheduler.timesteps.tolist()} vs ours {ours_ts.tolist()}")
    n = 8
    pipe = make_pipeline(model, device)(n, n, steps).float().cpu() * 2 - 1  # back from [0, 1]
    bare = make_bare(model, device)(n, n, steps).float().cpu()

    def our_noise(b: int, lo: int, hi: int) -> torch.Tensor:
        return draw_noise([sample_generator(SEED, i) for i in range(lo, hi)], model.sample_shape)

    bare_our_noise = make_bare(model, device, our_noise)(n, n, steps).float().cpu()
    ours_c = make_ours(model, None)(n, n, steps)
    ours_d = make_ours(model, 8)(n, n, steps)
    return {
        "timesteps": ours_ts.tolist(),
        "pipeline_vs_bare_max_abs": float((pipe - bare.clamp(-1, 1)).abs().max()),
        "bare_vs_ours_rows_none_max_abs": float((bare_our_noise - ours_c).abs().max()),
        "bare_vs_ours_rows_8_max_abs": float((bare_our_noise - ours_d).abs().max()),
    }


# ------------------------------------------------------------------------------------------------------------- timing
def time_interleaved(contenders: dict[str, Callable[[int, int, int], torch.Tensor]], device: torch.device,
                     n: int, batch_size: int, steps: int, repeats: int
                     ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall seconds and process CPU seconds of each run. With one thread and a busy machine, CPU time leaves out
    the time the process waited for a core, so it is far steadier than wall time (on GPU it means little)."""
    # warm-up: one full-size batch, 2 steps, each contender (kernel selection, allocator, lazy init)
    for run in contenders.values():
        run(min(n, batch_size), batch_size, min(steps, 2))
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in contenders}
    cpu: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(repeats):
        for key, run in contenders.items():
            start_cpu = time.process_time()
            times[key].append(timed(device, run, n, batch_size, steps)[1])
            cpu[key].append(time.process_time() - start_cpu)
        print(f"  repeat {r + 1}/{repeats}: " + "  ".join(f"({k}) {times[k][-1]:.2f}s wall {cpu[k][-1]:.2f}s cpu"
                                                        for k in times), flush=True)
    return times, cpu


class StubNetwork(torch.nn.Module):
    """Same inputs and outputs as the UNet at almost no cost: isolates the per-step cost of the loop itself."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5, device=device), requires_grad=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> SimpleNamespace:
        return SimpleNamespace(sample=x * self.scale)


def loop_overhead(model: LoadedModel, device: torch.device, n: int, batch_size: int, steps: int,
                  repeats: int) -> dict[str, list[float]]:
    """(b), (c), (d) with the UNet replaced by StubNetwork, interleaved, `repeats` times: the seconds per run
    that are not the network's. Far above the contention noise of a shared machine in relative terms, so its
    difference over the UNet's run time estimates the overhead that the UNet run cannot resolve."""
    stub = StubNetwork(device)
    runs = {"b": make_bare(model, device, network=stub), "c": make_ours(model, None, stub),
            "d": make_ours(model, 8, stub)}
    for run in runs.values():
        run(n, batch_size, steps)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            times[key].append(timed(device, run, n, batch_size, steps)[1])
    return times


def gpu_peak_memory(contenders: dict[str, Callable[[int, int, int], torch.Tensor]], device: torch.device,
                    n: int, batch_size: int, steps: int) -> dict[str, dict[str, float]]:
    out = {}
    for key, run in contenders.items():
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        result = run(n, batch_size, steps)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        del result
        out[key] = {"peak_mib": peak / 2**20, "peak_over_base_mib": (peak - base) / 2**20, "base_mib": base / 2**20}
    return out


def cpu_peak_rss(args: argparse.Namespace) -> dict[str, dict[str, float | None]]:
    """One run of each contender over one batch (the peak depends on the batch, not on n) in its own
    subprocess. Whole-process peak: ru_maxrss (KiB on Linux) from os.wait4
    of that child (dominated by loading torch and the model). Sampling peak: the child resets its RSS high-water
    mark after loading (`5` into /proc/self/clear_refs) and reports VmHWM after the run minus VmRSS before it."""
    out = {}
    for key in NAMES:
        cmd = [sys.executable, __file__, "--child", key, "--steps", str(args.steps), "--batch-size",
               str(args.batch_size), "--n", str(min(args.n, args.batch_size)), "--device", "cpu"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        stdout = proc.stdout.read() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"memory child for ({key}) exited with {proc.returncode}")
        child = json.loads(stdout.strip().splitlines()[-1])
        out[key] = {"peak_rss_mib": usage.ru_maxrss / 1024, "rss_before_run_mib": child["rss_before_kib"] / 1024,
                    "sampling_peak_over_start_mib": (None if child["hwm_after_kib"] is None else
                                                     (child["hwm_after_kib"] - child["rss_before_kib"]) / 1024)}
    return out


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child_main(args: argparse.Namespace) -> None:
    model = load_model("embedded", device="cpu")
    run = make_contenders(model, torch.device("cpu"))[args.child]
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark (Linux >= 4.0)
        reset = True
    except OSError:
        reset = False
    before = _proc_status_kib("VmRSS")
    run(args.n, args.batch_size, args.steps)
    print(json.dumps({"rss_before_kib": before, "hwm_after_kib": _proc_status_kib("VmHWM") if reset else None,
                      "maxrss_self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


# --------------------------------------------------------------------------------------------------------------- main
def markdown(path: Path) -> str:
    """The docs table of a results file: process CPU seconds per contender (the steadier measure on a shared
    machine), paired ratios to DDIMPipeline and the bare loop, and peak memory while sampling.

    Args:
        path: a bench_throughput.py results file.
    """
    report = json.loads(path.read_text())
    ratios = report["ratios_median_paired_cpu_time"]
    over_pipeline = {"a": 1.0, "c": ratios["ours_rows_none_over_pipeline_throughput"],
                     "d": ratios["ours_rows_8_over_pipeline_throughput"]}
    over_bare = {"a": ratios["pipeline_overhead_over_bare_pct"], "c": ratios["ours_rows_none_overhead_over_bare_pct"],
                 "d": ratios["ours_rows_8_overhead_over_bare_pct"]}
    labels = {"a": "diffusers `DDIMPipeline`", "b": "bare hand-written DDIM loop",
              "c": "this core, `network_rows=None`",
              "d": "this core, `network_rows=8` (bitwise batch-size invariant, default)"}
    rows = []
    for key, label in labels.items():
        memory = (report["memory"] or {}).get(key, {})
        peak = memory.get("sampling_peak_over_start_mib", memory.get("peak_over_base_mib"))
        rows.append([label, f"{report['median_cpu_s'][key]:.2f}",
                     f"{over_pipeline[key]:.3f}×" if key in over_pipeline else "—",
                     f"{over_bare[key]:+.1f} %" if key in over_bare else "—",
                     "—" if peak is None else f"{peak:+.0f} MiB"])
    return markdown_table(["contender", f"CPU s per {report['settings']['n']} samples", "vs DDIMPipeline",
                           "vs bare loop", "peak memory while sampling"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="write all numbers and the environment here")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--quick", action="store_true", help="smoke run: n=16, steps=3, repeats=1")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--child", choices=list(NAMES), help=argparse.SUPPRESS)
    parser.add_argument("--markdown", action="store_true", help="print the docs table of --json and exit")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(args.json))
        return
    if args.quick:
        args.n, args.steps, args.repeats = 16, 3, 1
    if args.child:
        child_main(args)
        return
    for name in ("steps", "batch_size", "n", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: {getattr(args, name)} must be a positive integer")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device: cuda was asked for but torch.cuda.is_available() is False")
    device = pick_device(args.device)
    env = environment(device)
    print(f"device={device}  torch={torch.__version__}  diffusers={env['diffusers']}  "
          f"torch threads={torch.get_num_threads()}  OMP_NUM_THREADS={env['OMP_NUM_THREADS']}  cpu={env['cpu_model']}")
    print(f"n={args.n}  batch_size={args.batch_size}  steps={args.steps}  repeats={args.repeats}  eta=0  "
          "timestep_spacing=leading  pipeline output_type=pt")

    model = load_model("embedded", device=device)
    checks = check_equivalence(model, device, args.steps)
    print(f"timesteps {checks['timesteps']}; max |Δ| pipeline vs bare {checks['pipeline_vs_bare_max_abs']:.2e}, "
          f"bare vs ours(None) {checks['bare_vs_ours_rows_none_max_abs']:.2e}, "
          f"bare vs ours(8) {checks['bare_vs_ours_rows_8_max_abs']:.2e}")

    contenders = make_contenders(model, device)
    times, cpu_times = time_interleaved(contenders, device, args.n, args.batch_size, args.steps, args.repeats)

    overhead_repeats = max(5, 5 * args.repeats)
    stub_times = loop_overhead(model, device, args.n, args.batch_size, args.steps, overhead_repeats)

    memory: dict[str, dict[str, float | None]] | None = None
    if not args.no_memory:
        memory = gpu_peak_memory(contenders, device, args.n, args.batch_size, args.steps) if device.type == "cuda" \
            else cpu_peak_rss(args)
    env["loadavg_end"] = os.getloadavg()

    med = {k: statistics.median(v) for k, v in times.items()}
    per_s = {k: args.n / med[k] for k in times}

    def paired(num: str, den: str) -> float:  # median over repeats of time[num] / time[den]
        return statistics.median(times[num][r] / times[den][r] for r in range(args.repeats))

    def of_min(num: str, den: str) -> float:  # min over repeats: the least contended run of each
        return min(times[num]) / min(times[den])

    def cpu_paired(num: str, den: str) -> float:  # as paired(), on process CPU time
        return statistics.median(cpu_times[num][r] / cpu_times[den][r] for r in range(args.repeats))

    def ratio_table(ratio: Callable[[str, str], float]) -> dict[str, float]:
        """The reported ratios under one way of pairing the timings (a: pipeline, b: bare, c/d: ours)."""
        return {
            "ours_rows_none_over_pipeline_throughput": ratio("a", "c"),
            "ours_rows_8_over_pipeline_throughput": ratio("a", "d"),
            "ours_rows_none_overhead_over_bare_pct": (ratio("c", "b") - 1) * 100,
            "ours_rows_8_overhead_over_bare_pct": (ratio("d", "b") - 1) * 100,
            "determinism_cost_rows_8_over_rows_none_pct": (ratio("d", "c") - 1) * 100,
            "pipeline_overhead_over_bare_pct": (ratio("a", "b") - 1) * 100,
        }

    ratios, ratios_of_min, ratios_cpu = ratio_table(paired), ratio_table(of_min), ratio_table(cpu_paired)
    cpu_med = {k: statistics.median(v) for k, v in cpu_times.items()}
    stub_min = {k: min(v) for k, v in stub_times.items()}
    unet_run_s = min(times["b"])  # the floor's run time is (almost) all UNet
    overhead = {
        "stub_min_s": stub_min,
        "ours_rows_none_extra_ms_per_run": (stub_min["c"] - stub_min["b"]) * 1e3,
        "ours_rows_8_extra_ms_per_run": (stub_min["d"] - stub_min["b"]) * 1e3,
        "ours_rows_none_overhead_pct_of_unet_run": (stub_min["c"] - stub_min["b"]) / unet_run_s * 100,
        "ours_rows_8_loop_overhead_pct_of_unet_run": (stub_min["d"] - stub_min["b"]) / unet_run_s * 100,
    }

    spread = max((max(v) - min(v)) / min(v) for v in times.values()) * 100
    if device.type == "cuda":
        mem_label = "peak MiB alloc (over start)"
    else:
        mem_label = "peak RSS MiB (sampling over start)"
    print(f"\n{'contender':<28}{'samples/s':>10}{'median s':>10}{'min s':>8}{'max s':>8}{'cpu s':>8}   {mem_label}")
    for k, name in NAMES.items():
        mem = ""
        if memory is not None:
            m = memory[k]
            if device.type == "cuda":
                mem = f"{m['peak_mib']:.1f} ({m['peak_over_base_mib']:+.1f})"
            else:
                extra = m["sampling_peak_over_start_mib"]
                mem = f"{m['peak_rss_mib']:.0f} ({'n/a' if extra is None else f'{extra:+.1f}'})"
        print(f"({k}) {name:<24}{per_s[k]:>10.2f}{med[k]:>10.2f}{min(times[k]):>8.2f}{max(times[k]):>8.2f}"
              f"{cpu_med[k]:>8.2f}   {mem}")
    print("\nratios (wall: median of paired per-repeat ratios | wall: ratio of minima | cpu: median of paired ratios)")
    for label, key, fmt, goal in [
        ("ours/DDIMPipeline throughput (c)", "ours_rows_none_over_pipeline_throughput", "{:.3f}", "goal >= 1.0"),
        ("ours/DDIMPipeline throughput (d)", "ours_rows_8_over_pipeline_throughput", "{:.3f}", "goal >= 1.0"),
        ("ours over bare loop (c)", "ours_rows_none_overhead_over_bare_pct", "{:+.1f} %", "goal <= 2 %"),
        ("ours over bare loop (d)", "ours_rows_8_overhead_over_bare_pct", "{:+.1f} %", "goal <= 2 %"),
        ("price of determinism (d)/(c)", "determinism_cost_rows_8_over_rows_none_pct", "{:+.1f} %", ""),
        ("DDIMPipeline over bare loop", "pipeline_overhead_over_bare_pct", "{:+.1f} %", ""),
    ]:
        print(f"  {label:<34}{fmt.format(ratios[key]):>10} | {fmt.format(ratios_of_min[key]):>10} | "
              f"{fmt.format(ratios_cpu[key]):>10}   {goal}")
    print(f"  largest (max - min)/min of one contender's wall times: {spread:.0f} % (contention on a shared machine)")
    print(f"\nloop overhead without the network (UNet -> stub, min of {overhead_repeats} interleaved runs):")
    print(f"  bare {stub_min['b'] * 1e3:.1f} ms, ours(None) {stub_min['c'] * 1e3:.1f} ms, "
          f"ours(8) {stub_min['d'] * 1e3:.1f} ms per run of {args.n} samples x {args.steps} steps")
    print(f"  => ours(None) costs {overhead['ours_rows_none_overhead_pct_of_unet_run']:+.2f} % and ours(8) "
          f"{overhead['ours_rows_8_loop_overhead_pct_of_unet_run']:+.2f} % of the bare loop's UNet run "
          f"({unet_run_s:.2f} s) beyond the bare loop (ours(8): loop only, not the chunked UNet calls)")
    print(f"\ncommand: {env['command']}")

    if args.json is not None:
        report = {
            "settings": {"n": args.n, "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats,
                         "eta": 0.0, "seed": SEED, "timestep_spacing": "leading", "pipeline_output_type": "pt",
                         "order": "interleaved a,b,c,d per repeat after one warm-up pass (2 steps) each"},
            "contenders": NAMES,
            "times_s": times, "median_s": med, "samples_per_s": per_s, "ratios_median_paired": ratios,
            "ratios_of_min": ratios_of_min, "max_spread_pct": spread,
            "cpu_times_s": cpu_times, "median_cpu_s": cpu_med, "ratios_median_paired_cpu_time": ratios_cpu,
            "loop_overhead_stub": {**overhead, "repeats": overhead_repeats, "times_s": stub_times},
            "memory": memory,
            "memory_method": ("torch.cuda.max_memory_allocated after reset_peak_memory_stats, one run each"
                              if device.type == "cuda" else
                              "one run per contender in its own subprocess: peak_rss_mib = ru_maxrss (os.wait4), "
                              "sampling_peak_over_start_mib = VmHWM after the run (reset via /proc/self/clear_refs) "
                              "minus VmRSS before it"),
            "checks": checks, "environment": env,
        }
        save_report(args.json, report)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
