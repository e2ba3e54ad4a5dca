#!/usr/bin/env bash
# Every GPU figure of issue 9 in one run (about 6 minutes on an H100/H200 with compilation):
# the training step at 8192 and 16384 rays, eager and compiled, with a profile of one compiled step and
# `mip360 train` itself (300 steps of 16384 rays) against the benchmark's step;
# rendering 512x512 (compiled, as `mip360 render` does by default on CUDA) and 1024x1024.
#   bash benchmarks/gpu.sh 2>&1 | tee gpu.log
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
python -c "import torch; print('torch', torch.__version__)"
python benchmarks/train_step.py --preset paper --device cuda --rays 8192,16384 --modes eager,compiled --profile --loop 300
python benchmarks/render.py --preset paper --device cuda --sizes 512,1024 --frames 5
