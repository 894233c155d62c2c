#!/usr/bin/env bash
# One device call: GPU tests of the graph-captured decode path, then the end-to-end decode benchmark.
# Usage (repo root, on the GPU machine): OUT=/some/dir bash benchmarks/gpu_decode.sh [bench args...]
set -x
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PYTHONPATH HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout ${TEST_TIMEOUT:-150} python3 -m pytest -q -x -s -m gpu tests/decode -p no:cacheprovider 2>&1 | tee "$OUT/pytest_gpu.log"
fi
timeout ${BENCH_TIMEOUT:-240} python3 scripts/bench_decode.py --out "$OUT/decode_h200.json" "$@" 2>&1 | tee "$OUT/bench.log"
ls -la "$OUT"
