#!/usr/bin/env bash
# The one-shot GPU job that produced the shipped embedded weights: feature network, DDPM (time-limited),
# then the 1000-step DDPM reference samples. Usage: experiments/train_on_device.sh DATA_DIR OUT_DIR MINUTES
set -euo pipefail
data=$1 out=$2 minutes=$3
work=$(mktemp -d)
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30
nvidia-smi -L || true
python3 experiments/train_features.py --data "$data" --out "$work/features" --epochs 15 --batch-size 256
cp "$work/features/feature_net.safetensors" "$work/features/features.log" "$out/"
python3 experiments/train_embedded.py --data "$data" --out "$work/unet" --steps 1000000 --max-minutes "$minutes" \
  --batch-size 256 --lr 3e-4 --ema-decay 0.9995 --checkpoint-every 2000
cp "$work/unet/ema/config.json" "$out/unet_config.json"
cp "$work/unet/ema/diffusion_pytorch_model.safetensors" "$out/unet.safetensors"
cp "$work/unet/ema/scheduler_config.json" "$out/scheduler_config.json"
cat "$work/unet/progress.json" >> "$work/unet/train.log"; grep -v ' loss ' "$work/unet/train.log" > "$out/train.log"
grep ' loss ' "$work/unet/train.log" | awk 'NR % 20 == 0' >> "$out/train.log"
python3 experiments/sample_ddpm.py --model "$work/unet/ema" --n 2000 --batch-size 1000 --seed 0 --out "$out/ddpm1000.npy"
