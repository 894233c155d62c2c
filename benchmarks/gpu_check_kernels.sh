#!/usr/bin/env bash
# GPU check of the Triton kernels (issue 6): GPU tests, then the attention benchmark.
# Run from the repository root on the GPU machine; results land in $OUT (default benchmarks/results).
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
python3 -c 'import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name())' | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee -a "$OUT/env.txt"
timeout 300 python3 -m pytest tests/kernels -m gpu -q -x -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
echo "gpu tests rc=$?"
timeout 270 python3 scripts/bench_attention.py --out "$OUT/bench_attention.json" 2>&1 | tee "$OUT/bench_attention.log"
echo "bench rc=$?"
