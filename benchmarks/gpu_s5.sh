#!/usr/bin/env bash
# Session 5, one device call: the GPU tests of the kernels and decoders (the Gluon page kernel is now the
# default where it serves), then the benchmark (scripts/bench_attention.py).
# Usage (repo root, on the GPU machine): OUT=/some/dir FCBOOST_COMMIT=<sha> bash benchmarks/gpu_s5.sh
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
python3 -c 'import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name())' | tee "$OUT/env.txt"
timeout ${TEST_TIMEOUT:-300} python3 -m pytest tests/kernels tests/decode -m gpu -q -p no:cacheprovider ${PYTEST_K:+-k "$PYTEST_K"} 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
[ -n "$NO_BENCH" ] || timeout ${BENCH_TIMEOUT:-270} python3 scripts/bench_attention.py --out "$OUT/bench_attention.json" 2>&1 | tee "$OUT/bench_attention.log" | grep -v "^correct"
