#!/usr/bin/env bash
# One device call (session 9): per-kernel timeline of the defaults at every benchmark shape, then
# Nsight Compute profiles (source-level stall samples) of the Gluon page kernel, static + values and
# kivi at 8 x 32K. Usage (repo root, GPU machine): OUT=/dir bash benchmarks/gpu_s9_profile.sh
set -x
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PYTHONPATH HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
[ "${SKIP_TIMELINE:-0}" = 1 ] || timeout 200 python3 benchmarks/attention_timeline.py --out "$OUT/timeline_s9_h200.json" \
  --methods kivi,static_f8_bv 2>&1 | tail -40
for m in static_f8_bv kivi; do
  timeout 150 ncu --clock-control none --set full --import-source yes -k regex:_page_kernel_gluon \
    --launch-skip 2 --launch-count 1 -o "$OUT/ncu_$m" python3 benchmarks/ncu_decode_attention.py $m 8 32768 \
    > "$OUT/ncu_${m}_run.log" 2>&1
  tail -3 "$OUT/ncu_${m}_run.log"
  ncu -i "$OUT/ncu_$m.ncu-rep" --page details > "$OUT/ncu_${m}_8x32k.txt" 2>&1
  ncu -i "$OUT/ncu_$m.ncu-rep" --page source --csv --print-source sass > "$OUT/ncu_${m}_sass.csv" 2>&1
  rm -f "$OUT/ncu_${m}_run.log"
  ls -la "$OUT"
done
# combine per (row, KV head) vs per query head, A/B at every shape
[ "${SKIP_COMBINE:-0}" = 1 ] || timeout 240 python3 benchmarks/gluon_probe.py --out "$OUT/combine_s9_h200.json" \
  --methods static_f8_bv,kivi --regs 0 \
  --variant rows='{"_launch": {"combine": "rows"}}' --variant rows2='{"_launch": {"combine": "rows", "combine_warps": 2}}' \
  --variant heads2='{"_launch": {"combine_warps": 2}}' 2>&1 | tail -40
