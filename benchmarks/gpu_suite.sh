#!/usr/bin/env bash
# The GPU measurements in one command, at most ~8 minutes: detector ours vs torchvision twin at 600 px (fp32,
# bf16), ResNet-50 bf16 channels_last training (eager, compiled), peak memory, the VOC card's memory per device.
# Writes $OUT/gpu_suite.json and $OUT/gpu_suite.md (the block for benchmarks/RESULTS.md).
#   bash benchmarks/gpu_suite.sh                 # OUT=output/gpu_suite
#   OUT=/tmp/s bash benchmarks/gpu_suite.sh --smoke   # any machine, tiny sizes
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-output/gpu_suite}"
# The 450 s budget stops new measurements; the outer 480 s limit is the hard stop (the JSON is written as it goes).
exec timeout 480 python benchmarks/gpu_suite.py --out "$OUT" --budget-s 450 \
    --det-backbone resnet50 --det-size 600 --det-max-size 1000 --det-batch 2 --det-rois 512 \
    --rounds 3 --iters 5 --warmup 2 \
    --cls-arch resnet50 --cls-size 224 --cls-batch 256 --cls-steps 20 "$@"
