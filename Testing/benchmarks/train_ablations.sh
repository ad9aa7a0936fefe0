#!/usr/bin/env bash
# Train the full model and the paper's five ablations with one small, equal budget and seed,
# for the ablation table of `bsafusion benchmark` (issue 5). Budget: 10 epochs x 64 pairs
# (160 steps of 4 crops of 128x128) on CT+PET+SPECT, seed 0, one CPU thread each.
# Usage: bash Testing/benchmarks/train_ablations.sh [RUNS_DIR]
set -euo pipefail
runs="${1:-runs/ablations}"
for name in full setting_a setting_b no_bsfa frl_only rrl_only; do
  OMP_NUM_THREADS=1 bsafusion train --config BSAFusionCore/bsafusion/configs/shipped.yaml \
    --set train.ablation="$name" --set train.epochs=10 --set train.samples_per_epoch=64 \
    --set train.val_max_cases=4 --out "$runs/$name" --no-progress \
    $( [ -f "$runs/$name/checkpoint.pt" ] && echo --resume )
done
