"""GPU A/B of the rest kernel's variants (``decode_attention(_rest=...)``, ``rest_warps``).

Correctness of every variant against the PyTorch reference on ragged rows (fp16, bf16; kivi, kitty
16, static keys, static keys + values), then CUDA-graph timings at the Qwen3-8B attention shape
(32 query heads, 8 KV heads, head_dim 128, bf16) of the whole ``decode_attention`` and of the rest +
combine alone (``n_splits=0``: no page kernel), per variant. Imports only torch, triton and
fcboost; about 3 minutes on an H200 with the default variants (a time guard skips the remaining
timings past ``--budget-s``).

    python benchmarks/rest_probe.py --out rest_probe.json [--variants split,tiles] [--extra JSON]
    python benchmarks/rest_probe.py --sass   # offline, no GPU: sm_90 registers / SASS per variant
    TRITON_INTERPRET=1 python benchmarks/rest_probe.py --smoke --out /tmp/smoke.json   # CPU check

More variants: ``--extra '{"w8": {"_rest": {"btq": 64}, "rest_warps": 8}}'`` (keys of
:func:`fcboost.kernels.decode_attention.rest_options` under ``_rest``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial

from fcboost.experiment.results import write_json

HQ, HKV, D = 32, 8, 128
SHAPES = [(64, 4096), (32, 8192), (8, 32768), (1, 32768)]  # large batch first (the time guard)
LENGTHS = [32768, 4097, 1000, 289, 161, 33, 1]

# decode_attention keyword arguments per variant; "split" is the default (no arguments)
VARIANTS = {
    "tiles": {"_rest": {"impl": "tiles"}},  # the session-5 rest kernel (the previous default)
    "split": {},  # _rest_split_kernel: 16-bit tiles of 64, tail tiles of 32, 4 warps, no pipelining
    "split_s2": {"_rest": {"stages": 2}},  # cp.async pipelining of both loops
    "split_r168": {"_rest": {"maxnreg": 168}},  # 3 programs per SM for every method (small spills)
    "split_small_r128": {"_rest": {"bt": 32, "btq": 16, "maxnreg": 128}},  # 4 per SM, kivi no spills
    "split_s2_r168": {"_rest": {"stages": 2, "maxnreg": 168}},
    "split_ps4": {"_rest": {"per_sm": 4}},  # twice the rest programs at 32 x 8K and 8 x 32K (no compile)
}


def methods() -> dict:
    from fcboost.quant.config import KVQuantConfig

    return {
        "kivi": KVQuantConfig.kivi(),
        "kitty16": KVQuantConfig.kitty(n_boost=16),
        "static_f8_keys": KVQuantConfig.static(n_boost=16, boost_values=False),
        "static_f8_bv": KVQuantConfig.static(n_boost=16, boost_values=True),
    }


def rel(a, ref) -> float:
    return float((a.float() - ref).norm() / ref.norm())


def sass(variants: dict) -> None:
    """Compile each variant's rest kernel for sm_90 as the launcher specializes it (bf16, new token,
    paper config, GQA 4, head_dim 128) and print registers, spill stack and the instructions of each
    loop per warp (16-bit tile loop, quantized-tail loop; the tile kernel has one)."""
    import triton
    from sass_stats import PTRS, loop_stats  # benchmarks/ (the script's folder)
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fcboost.kernels import attention_rest as ar
    from fcboost.kernels.decode_attention import rest_options

    ptrs = dict(PTRS, SK="*bf16", SV="*bf16", KB="*bf16", VW="*bf16", KN="*bf16", VN="*bf16", NREAL="*i32")
    for name, kw in variants.items():
        ro = rest_options(kw.get("_rest"), 128)
        warps = kw.get("rest_warps") or 4
        for m, cfg in methods().items():
            kb = cfg.selector != "none" and cfg.n_boost > 0
            vb, kd = kb and cfg.boost_values, cfg.selector == "dynamic_magnitude"
            consts = dict(GQ=4, BM=16, D=D, S=32, P=128, BN=128, NB=16 if kb else 0, NBP=16, KBOOST=kb,
                          VBOOST=vb, PAGED=True, HAS_NEW=True, KDYN=kd)  # fmt: skip
            if ro["impl"] == "split":
                fn, stages = ar._rest_split_kernel, ro["stages"]
                consts.update(
                    BTF=ro["bt"],
                    BTQ=ro["btq"],
                    NBV=32,
                    STAGES=stages,
                    ALIGNED=True,
                    PART=kw.get("_part", 0),
                    MIXED=kw.get("_mixed", False),
                )  # (_part / _mixed: the launcher's two-part rest and mixed-page tail, offline only)
            else:
                fn, stages = ar._rest_kernel, 1
                consts.update(BT=ro["bt"])
            sig, attrs = _specialize_rest(fn, consts, ptrs)
            opts = dict(
                num_warps=warps, num_stages=stages, **({"maxnreg": ro["maxnreg"]} if ro["maxnreg"] else {})
            )
            k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                               target=GPUTarget("cuda", 90, 32), options=opts)  # fmt: skip
            loops = _loops(k.asm["cubin"])
            s = loop_stats(k.asm["cubin"])
            print(f"{name} {m}: {s['regs']} registers, {s['stack']} B stack, {k.metadata.shared} B shared, "
                  f"loops (instructions per warp and tile, HMMA) {loops}", flush=True)  # fmt: skip


def _specialize_rest(fn, consts: dict, ptrs: dict):
    names = fn.arg_names
    not16 = {"s_vst", "H", "NSPLIT", "NREST", "NSLOT", "s_kib", "s_kih", "s_kip", "qk_scale"}
    sig = {
        n: "constexpr" if n in consts else ptrs.get(n, "fp32" if n == "qk_scale" else "i32") for n in names
    }
    attrs = {
        (names.index(n),): [["tt.divisibility", 16]] for n in names if n not in consts and n not in not16
    }
    return sig, attrs


def _loops(cubin: bytes) -> list:
    """(instructions, HMMA) of every backward branch's body longer than 20 instructions, in order."""
    import re

    from sass_stats import disassemble

    lines = disassemble(cubin)[2]
    labels = {x.strip()[1:-1]: k for k, x in enumerate(lines) if re.match(r"^\.L_x_\d+:$", x.strip())}
    out = []
    for i, line in enumerate(lines):
        b = re.search(r"BRA\s+`\(\.(L_x_\d+)\)", line)
        if b and b.group(1) in labels and labels[b.group(1)] < i:
            body = [x for x in lines[labels[b.group(1)] : i + 1] if re.match(r"\s*/\*[0-9a-f]{4,6}\*/", x)]
            if len(body) > 20:
                out.append((len(body), sum("HMMA" in x for x in body)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", help="JSON output (GPU run)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list of VARIANTS keys")
    ap.add_argument("--extra", default="", help='more variants as JSON: {"name": {decode_attention kwargs}}')
    ap.add_argument("--methods", default="kivi,kitty16,static_f8_keys,static_f8_bv")
    ap.add_argument("--rep-ms", type=int, default=25, help="do_bench repetition time per timing")
    ap.add_argument("--budget-s", type=float, default=215.0, help="skip timings past this wall time")
    ap.add_argument("--sass", action="store_true", help="offline: compile for sm_90, print registers/SASS")
    ap.add_argument("--smoke", action="store_true", help="CPU (TRITON_INTERPRET=1): short rows, no timing")
    args = ap.parse_args()
    variants = {k: VARIANTS[k] for k in args.variants.split(",") if k}
    variants.update(json.loads(args.extra) if args.extra else {})
    if args.sass:
        sass(variants)
        return
    if not args.out:
        ap.error("--out is required for the GPU run")

    import torch
    import triton

    from fcboost.kernels.decode_attention import decode_attention, decode_attention_reference
    from fcboost.kernels.state import random_state
    from fcboost.kernels.timing import graph_us

    t0 = time.time()
    dev = torch.device("cpu" if args.smoke else "cuda")
    lengths = [300, 161, 33, 1] if args.smoke else LENGTHS
    scaling = D**-0.5
    cfgs = {k: v for k, v in methods().items() if k in args.methods.split(",")}
    res = {"device": "cpu" if args.smoke else torch.cuda.get_device_name(dev), "torch": torch.__version__, "triton": triton.__version__,
           "commit": os.environ.get("FCBOOST_COMMIT", "unknown"), "command": " ".join(sys.argv),
           "variants": variants, "shape": {"q_heads": HQ, "kv_heads": HKV, "head_dim": D},
           "timing_note": "median us of CUDA-graph replays (do_bench, L2 flushed); whole: page + rest + "
                          "combine; rest_only: n_splits=0 (rest + combine, no page kernel)",
           "correctness": [], "timing": [], "skipped": []}  # fmt: skip

    def save():
        res["wall_s"] = time.time() - t0
        write_json(args.out, res)

    failed: set = set()
    cases = {}  # (method, dtype) -> state, inputs, reference
    for mname, mcfg in cfgs.items():
        for dt in (torch.float16, torch.bfloat16):
            st = random_state(mcfg, lengths, HKV, D, dt, dev, seed=3)
            q = torch.randn(len(lengths), HQ, D, device=dev, dtype=dt)
            kn, vn = (torch.randn(len(lengths), HKV, D, device=dev, dtype=dt) for _ in range(2))
            cases[mname, dt] = (st, q, kn, vn, decode_attention_reference(q, st, scaling, kn, vn))
    for k, kw in variants.items():  # variant by variant: past the budget the rest are skipped whole
        if time.time() - t0 > 0.6 * args.budget_s:
            failed.add(k)
            res["skipped"].append(f"{k} (correctness and timing: past the time budget)")
            continue
        e = {}
        for (mname, dt), (st, q, kn, vn, ref) in cases.items():
            tol = 1e-3 if dt == torch.float16 else 6e-3
            try:
                e[f"{mname} {dt}"] = rel(decode_attention(q, st, scaling, kn, vn, **kw), ref)
            except Exception as ex:  # a variant that does not compile or launch: reported, not timed
                e[f"{mname} {dt}"] = f"{type(ex).__name__}: {str(ex)[:300]}"
            if not (isinstance(e[f"{mname} {dt}"], float) and e[f"{mname} {dt}"] < tol):
                failed.add(k)
        res["correctness"].append(
            {"variant": k, "lengths": lengths, "tol": "fp16 1e-3, bf16 6e-3", "rel_l2": e}
        )
        print(f"correct {k} ({time.time() - t0:.0f} s)",
              {m: f"{v:.2e}" if isinstance(v, float) else v for m, v in e.items()}, flush=True)  # fmt: skip
    res["failed"] = sorted(failed)
    save()
    dtype = torch.bfloat16
    for B, T in [] if args.smoke else SHAPES:
        q = torch.randn(B, HQ, D, device=dev, dtype=dtype)
        kn, vn = (torch.randn(B, HKV, D, device=dev, dtype=dtype) for _ in range(2))
        for mname, mcfg in cfgs.items():
            st = random_state(mcfg, [T - 1] * B, HKV, D, dtype, dev, seed=1)
            mt = int((torch.minimum(st.n_pages * mcfg.page_size, st.n_vq) // 64).max())
            row = {"method": mname, "batch": B, "context": T, "whole_us": {}, "rest_only_us": {}}
            for key, kw in variants.items():
                if key in failed:
                    continue
                if time.time() - t0 > args.budget_s:
                    res["skipped"].append(f"{mname} {B}x{T} {key}")
                    continue
                fn = partial(decode_attention, q, st, scaling, kn, vn, max_tiles=mt, **kw)
                try:
                    row["whole_us"][key] = graph_us(fn, args.rep_ms)
                    row["rest_only_us"][key] = graph_us(partial(fn, n_splits=0), args.rep_ms)
                except Exception as ex:
                    res["skipped"].append(f"{mname} {B}x{T} {key}: {type(ex).__name__}: {str(ex)[:200]}")
            res["timing"].append(row)
            print(f"{mname} {B}x{T} ({time.time() - t0:.0f} s) whole",
                  {k: round(v, 1) for k, v in row["whole_us"].items()}, "rest only",
                  {k: round(v, 1) for k, v in row["rest_only_us"].items()}, flush=True)  # fmt: skip
            save()
    save()


if __name__ == "__main__":
    main()
