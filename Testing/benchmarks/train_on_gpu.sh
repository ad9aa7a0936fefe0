#!/usr/bin/env bash
# Train the shipped configuration on a CUDA machine for a bounded time, with AMP, and leave the
# run (checkpoint.pt, best.pt, logs) in OUT_DIR. Needs nothing but a copy of the repository, the
# Harvard data beside it (../shared/data/harvard) and the wheels in WHEELS_DIR (torch for CUDA
# and the project's dependencies) when the machine has no package index.
# Resumes when OUT_DIR already holds a checkpoint of the same configuration.
#
# Usage: bash Testing/benchmarks/train_on_gpu.sh OUT_DIR [MINUTES=9] [WHEELS_DIR]
# The batch is 4x the CPU one (32, the published batch) and the learning rate is scaled with
# its square root; a GPU run is therefore a configuration of its own (its own OUT_DIR).
set -euo pipefail
out="${1:?usage: train_on_gpu.sh OUT_DIR [MINUTES] [WHEELS_DIR]}"
minutes="${2:-9}"
wheels="${3:-}"
cd "$(dirname "$0")/../.."
if ! python3 -c "import bsafusion" 2>/dev/null; then
  if [ -n "$wheels" ]; then
    pip install -q --no-index --find-links "$wheels" -e BSAFusionCore
  else
    pip install -q -e BSAFusionCore
  fi
fi
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible')"
resume=()
[ -f "$out/checkpoint.pt" ] && resume=(--resume)
# the time limit interrupts the run (exit 124); checkpoints are atomic and every 40 steps
status=0
timeout --signal=INT "$((minutes * 60))" bsafusion train \
  --config BSAFusionCore/bsafusion/configs/shipped.yaml --out "$out" --device cuda --no-progress \
  --set train.amp=true --set train.threads=null --set train.batch_size=32 --set train.lr=0.002 \
  --set train.samples_per_epoch=3840 --set train.epochs=40 "${resume[@]}" || status=$?
if [ "$status" -ne 0 ] && [ "$status" -ne 124 ]; then exit "$status"; fi
python3 Testing/benchmarks/learning_curve.py "$out" | tail -n 5
