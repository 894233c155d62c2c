#!/usr/bin/env bash
# Session 5 device calls: the Gluon page kernel's variants (cp.async pipeline depth, register caps):
# correctness, timings, rest + combine alone, and Nsight Compute profiles of the page kernel at 8 x 32K.
# Usage (repo root, on the GPU machine): OUT=/some/dir FCBOOST_COMMIT=<sha> bash benchmarks/gpu_gluon_s5.sh
# Knobs (environment): STAGES, REGS, METHODS (probe lists), NCU ("method:key=value,..." profiles, space-separated)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
timeout ${PROBE_TIMEOUT:-300} python3 benchmarks/gluon_probe.py --out "$OUT/gluon_probe.json" --rest-only \
  --stages ${STAGES:-2} --regs ${REGS:-168} --methods ${METHODS:-kivi,static_f8_bv} 2>&1 | tee "$OUT/gluon_probe.log"
S="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis"
for spec in ${NCU:-}; do
  m=${spec%%:*}; args=$(echo "${spec#*:}" | tr ',' ' ')
  f="$OUT/ncu_$(echo "$spec" | tr ':,=' '___').txt"
  timeout 100 ncu $S -k regex:_page_kernel_gluon --launch-skip 2 --launch-count 1 \
    python3 benchmarks/ncu_decode_attention.py $m 8 32768 gluon=True $args > "$f" 2>&1
  echo "== $spec"; grep -E "Duration|Eligible Warps|Issued Warp|Warp Cycles Per Issued|Achieved Occupancy|DRAM Throughput|Registers Per|L2 Hit|Block Limit (Reg|Shared)|stalled" "$f" | head -20
done
