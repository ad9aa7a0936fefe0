#!/usr/bin/env bash
# Train the full model and the paper's five ablations with one small, equal budget and seed,
# for the ablation rows of `bsafusion benchmark`.
# Budget: 6 epochs x 64 pairs = 96 steps of 4 crops of 128x128 on CT+PET+SPECT, seed 0, all
# runs warm-started from the same checkpoint (parameters whose names and shapes match; the
# blocks an ablation removes or changes start fresh).
# Usage: bash Testing/benchmarks/train_ablations.sh WARM_START.pt [RUNS_DIR]
set -euo pipefail
warm="$1"
runs="${2:-runs/ablations}"
for name in full setting_a setting_b no_bsfa frl_only rrl_only; do
  bsafusion train --config BSAFusionCore/bsafusion/configs/shipped.yaml \
    --set "train.modalities=[CT,PET,SPECT]" --set train.ablation="$name" --set train.epochs=6 \
    --set train.samples_per_epoch=64 --set train.val_max_cases=4 --set train.init_weights="$warm" \
    --out "$runs/$name" --no-progress $( [ -f "$runs/$name/checkpoint.pt" ] && echo --resume )
done
