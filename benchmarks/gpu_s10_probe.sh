#!/usr/bin/env bash
# One device call (prepared in session 9, not yet run): the page-at-once Gluon page kernel
# (benchmarks/variants/attention_page_gluon_p2.py; p3: the same with a page's P^T tiles stored to
# their own shared tiles behind one barrier; both compiled offline only) against the default kernel,
# checked against the reference first (gluon_probe's correctness pass), then timed at every shape
# (uncapped registers: Kitty spills 24 B at the default 168 cap with 4 stages);
# kivi needs residency 10 with its 4-step shared memory (20 KB per program). Also 2-warp rest programs
# at every batch (they fit beside the page kernel's whole wave: the rest then need not wait for it).
# Usage (repo root, GPU machine): OUT=/dir bash benchmarks/gpu_s10_probe.sh
set -x
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PYTHONPATH HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout 400 python3 benchmarks/gluon_probe.py --out "$OUT/probe_p2_h200.json" --methods static_f8_bv,kivi,kitty16 \
  --regs 0 --variant default='{}' --variant rw2='{"rest_warps": 2}' \
  --old-kernel p2=benchmarks/variants/attention_page_gluon_p2.py --old-kernel p3=benchmarks/variants/attention_page_gluon_p3.py \
  --old-kw s4='{"_gluon": {"stages": 4, "maxnreg": 0}}' --old-kw s4r10='{"_gluon": {"stages": 4, "maxnreg": 0, "resident": 10}}' \
  2>&1 | grep -v "^  \|Warn" | tail -30
