"""Cold start of the CLI: `--help` and `schedules list`, against `import torch` measured in the same run.

Each command runs as a fresh process, `--repeats` times, the contenders interleaved so that the machine's load
hits them alike; the report gives the median wall time and its ratio to `python -c "import torch"` (what any
torch-importing command pays at least). `--repo DIR` times another checkout of this project (e.g. an older commit
in a git worktree) with this interpreter, so before and after come from one run.

    python experiments/bench_startup.py --json experiments/results/bench_startup.json
    git worktree add /tmp/before <commit>
    python experiments/bench_startup.py --repo /tmp/before --json runs/startup_before.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import ROOT, environment, save_report


def contenders(cli_group: str) -> dict[str, list[str]]:
    cli = [sys.executable, "-c", "import sys; from adaptive_sampler.cli import main; sys.argv[0] = 'adaptive-sampler'; "
                                 "main()"]
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "adaptive-sampler --help": [*cli, "--help"],
        f"adaptive-sampler {cli_group} list": [*cli, cli_group, "list"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout to time (default: this one)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    # older checkouts call the catalogue commands `policies`
    group = "schedules" if (args.repo / "adaptive_sampler" / "cli" / "schedules.py").is_file() else "policies"
    commands = contenders(group)
    env = {**os.environ, "PYTHONPATH": str(args.repo), "OMP_NUM_THREADS": "1"}
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, argv in commands.items():
            start = time.perf_counter()
            subprocess.run(argv, env=env, cwd=args.repo, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    torch_s = statistics.median(times["python -c 'import torch'"])
    rows = {name: {"median_s": statistics.median(ts), "min_s": min(ts),
                   "vs_import_torch": statistics.median(ts) / torch_s} for name, ts in times.items()}
    for name, row in rows.items():
        print(f"{name:<34} median {row['median_s']:6.2f} s  min {row['min_s']:6.2f} s  "
              f"{row['vs_import_torch']:5.2f}x import torch")
    save_report(args.json, {"repo": str(args.repo), "repeats": args.repeats, "rows": rows,
                            "environment": environment()})


if __name__ == "__main__":
    main()
