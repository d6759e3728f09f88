#!/bin/bash
# held-out comparisons for the embedded-t2i learned lists (the tuner's held-out seed and n), one after another
cd "$(dirname "$0")/.." && mkdir -p runs/t2i_tune experiments/results/tune_t2i
common="--model embedded-t2i --prompts experiments/data/t2i_prompts.txt --guidance-scale 3 --solver dpmpp-2m --n 2000 --seed 1000000"
for job in "learned:embedded-t2i/dpmpp-2m-10 0" "uniform 10" "uniform 8" "karras 10" "karras 8"; do
  set -- $job
  name=$(echo "$1-$2" | tr ':/' '__')
  if [ "$2" = "0" ]; then steps=""; else steps="--steps $2"; fi
  OMP_NUM_THREADS=1 .venv/bin/adaptive-sampler eval $common --policy $1 $steps --json experiments/results/tune_t2i/eval_$name.json < /dev/null > runs/t2i_tune/eval_$name.log 2>&1
  echo "$job -> $?"
done
