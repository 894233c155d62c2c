#!/usr/bin/env bash
# Session 5, one device call: the Gluon page kernel's L2-prefetch variants (correctness, timings) and an
# Nsight Compute profile of the Gluon page kernel (KIVI and static + values, 8 x 32K, prefetch 0 and 2).
# Usage (repo root, on the GPU machine): OUT=/some/dir FCBOOST_COMMIT=<sha> bash benchmarks/gpu_gluon_s5.sh
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
timeout ${PROBE_TIMEOUT:-300} python3 benchmarks/gluon_probe.py --out "$OUT/gluon_pf.json" --pf ${PFS:-0,1,2,4} \
  --methods kivi,static_f8_bv 2>&1 | tee "$OUT/gluon_pf.log"
S="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis"
for m in kivi static_f8_bv; do
  for pf in 0 2; do
    timeout 100 ncu $S -k regex:_page_kernel_gluon --launch-skip 2 --launch-count 1 \
      python3 benchmarks/ncu_decode_attention.py $m 8 32768 gluon_il=True pf=$pf > "$OUT/ncu_${m}_pf${pf}.txt" 2>&1
    grep -E "Duration|Eligible Warps|Issued Warp|Warp Cycles Per Issued|Achieved Occupancy|DRAM Throughput|Registers Per|Stall" "$OUT/ncu_${m}_pf${pf}.txt" | head -20
  done
done
