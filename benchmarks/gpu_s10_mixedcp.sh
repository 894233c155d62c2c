#!/usr/bin/env bash
# One device call (session 10): the mixed pages' window rows by cp.async (aed8c92) -- GPU tests of the
# mixed pages, the large-batch defaults and the launch orders; then gluon_probe against the previous
# kernel (create it first, on this machine: git show c40705e:fcboost/kernels/attention_page_gluon.py >
# benchmarks/variants/attention_page_gluon_s9.py), mixed pages also forced on; then the benchmark.
# Usage (repo root, GPU machine): OUT=/dir bash benchmarks/gpu_s10_mixedcp.sh
set -x
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PYTHONPATH HF_HUB_OFFLINE=1
timeout 150 python3 -m pytest -q -x -m gpu tests/kernels/test_decode_attention.py -k "mixed or large_batch or launch_order" 2>&1 | tail -6 | tee $OUT/gpu_tests_mixedcp_s10_h200.log
timeout 200 python3 benchmarks/gluon_probe.py --out $OUT/probe_mixedcp_s10_h200.json --methods static_f8_bv,kivi,kitty16 --variant default='{}' --variant mixed='{"_gluon": {"mixed": true}}' --old-kernel s9=benchmarks/variants/attention_page_gluon_s9.py --old-kw d='{}' --old-kw mixed='{"_gluon": {"mixed": true}}' 2>&1 | grep -v "^  \|Warn" | tail -21
timeout 75 python3 scripts/bench_attention.py --out $OUT/bench_attention_s10b_h200.json > $OUT/bench_attention_s10b_h200.log 2>&1; tail -17 $OUT/bench_attention_s10b_h200.log
