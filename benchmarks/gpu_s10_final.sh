#!/usr/bin/env bash
# One device call (session 10): the benchmark at the committed defaults (figures for the code as it
# is, the 64-channel key-page pack default included), the GPU tests of what changed since the last full
# GPU run (pack bitwise at batch 64; fused-vs-reference generate and the graph decoder on the Qwen3-8B
# shape), then end-to-end decode throughput at 32K.
# Usage (repo root, GPU machine): OUT=/dir bash benchmarks/gpu_s10_final.sh
set -x
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PYTHONPATH HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout 120 python3 scripts/bench_attention.py --out "$OUT/bench_attention_s10_h200.json" > "$OUT/bench_attention_s10_h200.log" 2>&1
tail -25 "$OUT/bench_attention_s10_h200.log"
timeout 200 python3 -m pytest -q -m gpu tests/kernels/test_quant_pack.py tests/kernels/test_fused_path.py \
  tests/decode/test_fast_decoder.py 2>&1 | tail -8 | tee "$OUT/gpu_tests_s10_h200.log"
timeout 150 python3 scripts/bench_decode.py --out "$OUT/decode_s10_h200.json" --contexts 32768 \
  --caches static_bf16 kivi kitty static --steps 64 --big-steps 16 --sweep --time-budget 110 > "$OUT/decode_s10_h200.log" 2>&1
tail -12 "$OUT/decode_s10_h200.log"
