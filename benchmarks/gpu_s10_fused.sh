#!/usr/bin/env bash
# One device call (session 10): the fused combine (the last program of each (row, head) merges the
# partials; default up to 16 partials) -- its GPU tests (bitwise equal to the combine launch, CUDA
# graph replays), then the whole decode_attention at every shape: default against the combine launch
# (`kernel`) and forced `fused` (it refuses shapes with more than 16 partials; the probe records the error).
# Usage (repo root, GPU machine): OUT=/dir bash benchmarks/gpu_s10_fused.sh
set -x
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PYTHONPATH HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout 240 python3 -m pytest -q -x -m gpu tests/kernels/test_decode_attention.py \
  -k "fused_combine_gpu or large_batch or launch_order" 2>&1 | tail -15 | tee "$OUT/gpu_tests_fused_s10_h200.log"
timeout 300 python3 benchmarks/gluon_probe.py --out "$OUT/probe_fused_s10_h200.json" --methods static_f8_bv,kivi,kitty16 \
  --variant default='{}' --variant kernel='{"_launch": {"combine": "kernel"}}' \
  --variant fused='{"_launch": {"combine": "fused"}}' 2>&1 | grep -v "^  \|Warn" | tail -30
