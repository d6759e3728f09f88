"""Wall-time speed-up of the adaptive rows of a bench_early_exit results file, on a quiet machine, in one run.

bench_early_exit.py measures quality at n = 2,000 over hours, while other jobs share the CPU, so its wall times are
not comparable between rows. This script re-times every adaptive row of `--json` (monitors with their finish,
steering monitors on `steered:N`, `adaptive:TOL`) on the first `--n` samples of the same evaluation seed,
alternating with the full run: full, row, full, row, … (`--repeats` pairs), so drift in the machine's speed
hits both alike. Per row it prints the mean NFE, the wall-clock speed-up over the full run (monitor cost
included), the NFE ratio, and their quotient (1 = the saved evaluations are saved in wall time too).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/time_early_exit.py --json experiments/results/early_exit_ddim.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from harness import environment, markdown_table, round_decimals, save_report

from adaptive_sampler.finish import parse_finish
from adaptive_sampler.models import load_model
from adaptive_sampler.monitors import monitor_from_spec
from adaptive_sampler.policies.builtin import Uniform
from adaptive_sampler.policies.step_size_control import SteeredPlan, parse_dynamic_policy
from adaptive_sampler.sampler import sample
from adaptive_sampler.solvers import make_solver


def plan_of(row: dict[str, Any], steps: int, schedule: Any) -> tuple[Any, Any, str | None]:
    """(plan, monitor, finish) of a results row."""
    if row["kind"] == "monitor":
        return Uniform().timesteps(steps, schedule), monitor_from_spec(row["spec"]), row["finish"]
    if row["kind"] == "steering":
        return SteeredPlan(steps=steps), monitor_from_spec(row["spec"]), None
    return parse_dynamic_policy(row["spec"]), None, None


def markdown(*paths: Path) -> str:
    """One table of the timings files' rows, per file and solver by NFE (calibrated thresholds in a row's name to 4
    significant digits).

    Args:
        *paths: time_early_exit.py timings files (`*.timing.json`).
    """
    rows = []
    for path in paths:
        for section, timings in json.loads(path.read_text())["sections"].items():
            for key, row in sorted(timings.items(), key=lambda kv: kv[1]["nfe_mean"]):
                rows.append([section.split("/")[0], f"`{round_decimals(key)}`", f"{row['nfe_mean']:.1f}",
                             f"{row['speedup']:.2f}×", f"{row['nfe_ratio']:.2f}×",
                             f"{row['speedup_over_nfe_ratio']:.2f}"])
    return markdown_table(["solver", "row", "NFE", "speed-up over the full run", "NFE ratio",
                           "speed-up / NFE ratio"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True, help="a bench_early_exit.py results file (pixel model)")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2, help="full/row pairs per row")
    parser.add_argument("--out", type=Path, default=None, help="write the timings here (default: beside --json)")
    parser.add_argument("--markdown", action="store_true", help="print the docs table of --json (a timings file)")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(args.json))
        return
    data = json.loads(args.json.read_text())
    settings = data["settings"]
    if settings.get("model", "embedded") != "embedded":
        raise SystemExit(f"--json: {args.json} is of model {settings['model']}; this script times the pixel model")
    model = load_model("embedded")
    adapter = model.adapter(network_rows=settings["network_rows"])
    out: dict[str, Any] = {"source": str(args.json), "n": args.n, "repeats": args.repeats,
                           "threads": torch.get_num_threads(), "environment": environment(), "sections": {}}
    for section, rows in data["rows"].items():
        solver, steps = section.split("/")[0], int(section.split("/")[1])

        def timed(plan: Any, monitor: Any = None, finish: str | None = None,
                  solver: str = solver) -> tuple[float, float]:
            start = time.perf_counter()
            result = sample(adapter, plan, model.sample_shape, args.n, batch_size=settings["batch_size"],
                            seed=settings["seed"], solver=make_solver(solver), monitor=monitor,
                            finish=parse_finish(finish))
            return time.perf_counter() - start, result.nfe_mean

        full_plan = Uniform().timesteps(steps, adapter.schedule)
        timings = {}
        for key, row in rows.items():
            if row.get("kind") not in ("monitor", "steering", "adaptive") or "skipped" in row:
                continue
            full_walls, row_walls, nfe = [], [], 0.0
            for _ in range(args.repeats):
                full_walls.append(timed(full_plan)[0])
                wall, nfe = timed(*plan_of(row, steps, adapter.schedule))
                row_walls.append(wall)
            speedup = statistics.mean(full_walls) / statistics.mean(row_walls)
            nfe_ratio = steps / nfe
            timings[key] = {"nfe_mean": nfe, "full_wall_s": full_walls, "row_wall_s": row_walls,
                            "speedup": speedup, "nfe_ratio": nfe_ratio, "speedup_over_nfe_ratio": speedup / nfe_ratio}
            print(f"{section:<14}{key:<44} NFE {nfe:5.1f}  speed-up {speedup:5.2f}x  NFE ratio {nfe_ratio:5.2f}x  "
                  f"quotient {speedup / nfe_ratio:5.2f}", flush=True)
        out["sections"][section] = timings
    path = args.out or args.json.with_name(f"{args.json.stem}.timing.json")
    save_report(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
