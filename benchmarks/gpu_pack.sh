#!/usr/bin/env bash
# One device call for the pack kernels (issue 6): their GPU tests, the pack benchmark, then the other
# kernel and decode GPU tests (the quantization reference they compare against is shared).
# Usage (repo root, on the GPU machine): OUT=/some/dir FCBOOST_COMMIT=<sha> bash benchmarks/gpu_pack.sh
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
python3 -c 'import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name())' | tee "$OUT/env.txt"
timeout 150 python3 -m pytest tests/kernels/test_quant_pack.py -m gpu -q -x -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests_pack.log"
timeout 150 python3 scripts/bench_attention.py --pack-only --out "$OUT/bench_pack.json" 2>&1 | tee "$OUT/bench_pack.log"
timeout ${REST_TIMEOUT:-240} python3 -m pytest tests/kernels/test_decode_attention.py tests/kernels/test_fused_path.py tests/decode -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests_rest.log"
