#!/bin/bash
# The README's early-exit tables: experiments/bench_early_exit.py in passes that add rows to one results file per
# solver and model (each pass reuses the rows already there).
# Usage: experiments/early_exit_runs.sh SOLVER [MODEL [FIRST_PASS]]
set -euo pipefail
cd "$(dirname "$0")/.."
solver=$1 model=${2:-embedded}
json=experiments/results/early_exit_${solver}.json
extra=()
if [ "$model" = embedded-t2i ]; then
  json=experiments/results/early_exit_t2i_${solver}.json
  extra=(--model embedded-t2i --prompts experiments/data/t2i_prompts.txt --guidance-scale 3)
fi
bench() { OMP_NUM_THREADS=1 .venv/bin/python experiments/bench_early_exit.py --json "$json" --solvers "$solver" \
  --reference-steps "${extra[@]}" "$@" < /dev/null; }
from=${3:-1}  # resume from this pass
[ "$from" -le 1 ] && bench --monitors x0-l2 --targets psnr:30 psnr:25  # x̂0 change, two fidelity targets, steering, adaptive
[ "$from" -le 2 ] && bench --monitors x0-l2 --targets fid:3 psnr:20  # FID at most 3 % above the full run; looser PSNR
[ "$from" -le 3 ] && bench --monitors x0-l2 --targets psnr:30 --reference-steps 50  # the 50-step reference run
if [ "$model" = embedded-t2i ] && [ "$from" -le 4 ]; then             # monitors on decoded x̂0 (their decode is timed)
  bench --monitors x0-l2,space=image --targets psnr:30
fi
[ "$from" -le 5 ] && bench --monitors features sharpness --targets psnr:30  # the other monitors
exit 0
