"""Record the sampling loop's golden outputs (samples, NFE, accepted timesteps) on a tiny UNet.

Recorded from the two-loop code at commit 212507e (`sampler.sample` and `dynamic_sampler.sample_dynamic`) before the
loops became one; `tests/test_loop_golden.py` checks that the current loop reproduces every case bitwise on CPU.
One thread, so the convolution sums are summed in the same order on every machine. It uses the two-loop API, so
it runs on a checkout of that commit:

    git worktree add /tmp/two-loops 212507e && cp tests/golden/record_loop_golden.py /tmp/two-loops/tests/golden/
    cd /tmp/two-loops && OMP_NUM_THREADS=1 python tests/golden/record_loop_golden.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from conftest import TINY_SHAPE, build_tiny_unet, tiny_scheduler_config  # noqa: E402

from adaptive_sampler import ModelAdapter, make_policy, make_solver, sample  # noqa: E402
from adaptive_sampler.dynamic_sampler import sample_dynamic  # noqa: E402
from adaptive_sampler.monitors import monitor_from_spec  # noqa: E402
from adaptive_sampler.policies.step_size_control import StepSizeControl  # noqa: E402

N, BATCH_SIZE, SEED, STEPS = 6, 4, 3, 10
SCHEDULES = ("uniform", "karras", "learned:fashion-mnist/ddim-10")
# the x0-l2 threshold of each monitored case is the one of these whose exits spread over the most steps
THRESHOLDS = (0.3, 0.2, 0.1, 0.07, 0.05, 0.03, 0.02, 0.01, 0.005, 0.002)
TOLERANCES = (0.01, 0.003)


def cases() -> list[dict]:
    """Every case: solver x schedule x eta (DDIM only) x monitor, then adaptive:TOL."""
    out = []
    for solver in ("ddim", "dpmpp-2m", "unipc"):
        for schedule in SCHEDULES:
            for eta in ((0.0, 1.0) if solver == "ddim" else (0.0,)):
                for monitor in (None, "x0-l2"):
                    out.append({"solver": solver, "policy": schedule, "eta": eta, "monitor": monitor})
    out += [{"solver": "ddim", "policy": f"adaptive:{tol:g}", "eta": 0.0, "monitor": None} for tol in TOLERANCES]
    return out


def case_name(case: dict) -> str:
    monitor = "none" if case["monitor"] is None else "x0-l2"
    return f"{case['solver']}|{case['policy']}|eta={case['eta']:g}|monitor={monitor}"


def main() -> None:
    torch.set_num_threads(1)
    adapter = ModelAdapter.from_diffusers(build_tiny_unet(), tiny_scheduler_config())
    tensors, meta = {}, {}
    for case in cases():
        name = case_name(case)
        if case["policy"].startswith("adaptive:"):
            result = sample_dynamic(adapter, StepSizeControl(tolerance=float(case["policy"].split(":")[1])),
                                    TINY_SHAPE, N, batch_size=BATCH_SIZE, seed=SEED)
            timesteps = result.timesteps
            tensors[f"{name}/rejected"] = result.rejected.contiguous()
        else:
            ts = make_policy(case["policy"]).timesteps(STEPS, adapter.schedule)

            def run(spec: str | None, ts=ts, case=case):
                callback = monitor_from_spec(spec).as_callback() if spec else None
                return sample(adapter, ts, TINY_SHAPE, N, batch_size=BATCH_SIZE, seed=SEED, eta=case["eta"],
                              solver=make_solver(case["solver"]), callback=callback)

            if case["monitor"]:
                runs = {f"x0-l2:{th:g}": run(f"x0-l2:{th:g}") for th in THRESHOLDS}
                case["monitor"] = max(runs, key=lambda spec: len(set(runs[spec].nfe.tolist())))
                result = runs[case["monitor"]]
            else:
                result = run(None)
            timesteps = [ts[: int(k)].tolist() for k in result.nfe]
        tensors[f"{name}/samples"] = result.samples.contiguous()
        tensors[f"{name}/nfe"] = result.nfe.contiguous()
        meta[name] = {**case, "timesteps_per_sample": timesteps}
        print(name, result.nfe.tolist())
    save_file(tensors, HERE / "loop_golden.safetensors")
    (HERE / "loop_golden.json").write_text(json.dumps({"n": N, "batch_size": BATCH_SIZE, "seed": SEED,
                                                       "steps": STEPS, "cases": meta}, indent=1) + "\n")


if __name__ == "__main__":
    main()
