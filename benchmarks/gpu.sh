#!/usr/bin/env bash
# Every GPU figure of issue 9 in one run (about 6 minutes on an H100/H200 with compilation):
# the training step at 8192 and 16384 rays, eager and compiled, with a profile of one compiled step and
# `mip360 train` itself (300 steps of 16384 rays) against the benchmark's step;
# rendering 512x512 (compiled, as `mip360 render` does by default on CUDA) and 1024x1024.
#   bash benchmarks/gpu.sh 2>&1 | tee gpu.log
# It needs no installed mip360cli (the repository's root goes on PYTHONPATH) and uses python3, as on the
# lent GPU machines. A check of its plumbing on a CPU (a minute):
#   DEVICE=cpu PRESET=tiny RAYS=256 LOOP=20 SIZES=32 FRAMES=1 bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda} PRESET=${PRESET:-paper} RAYS=${RAYS:-8192,16384} LOOP=${LOOP:-300}
SIZES=${SIZES:-512,1024} FRAMES=${FRAMES:-5}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
fi
"$PY" -c "import torch, mip360cli; print('torch', torch.__version__, '| mip360cli from', mip360cli.__file__)"
"$PY" benchmarks/train_step.py --preset "$PRESET" --device "$DEVICE" --rays "$RAYS" --modes eager,compiled \
  --profile --loop "$LOOP"
"$PY" benchmarks/render.py --preset "$PRESET" --device "$DEVICE" --sizes "$SIZES" --frames "$FRAMES"
