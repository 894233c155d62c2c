"""Key-page pack variants at the benchmark shape: bitwise checks and CUDA-graph timings on a GPU, or
registers and SASS instruction counts for sm_90 offline (no GPU: Triton's bundled ptxas and nvdisasm).

Shape as ``scripts/bench_attention.py::bench_pack``: batch 64, one 128-token page for all 8 KV heads,
head_dim 128, bf16 keys into page 2. Each variant (``pack_keys_into``'s ``num_warps``,
``block_channels`` and private ``_variant``; :data:`fcboost.kernels.quant_pack.KEY_VARIANTS`) is first
checked bitwise against :func:`fcboost.quant.mixed.quantize_key_pages` (codes, scales, zeros, Kitty's
channel list), then timed (median of CUDA-graph replays, L2 flushed). Imports only torch, triton and
fcboost.

    FCBOOST_COMMIT=<sha> python benchmarks/pack_probe.py --out pack_probe.json   # GPU, about a minute
    python benchmarks/pack_probe.py --sass                                          # offline, sm_90
    TRITON_INTERPRET=1 python benchmarks/pack_probe.py --batch 2                    # CPU: checks only
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import time
from functools import partial

import torch
import triton

from fcboost.experiment.results import write_json
from fcboost.kernels.quant_pack import _key_pack_plan, key_storage, pack_keys_into
from fcboost.kernels.state import random_state
from fcboost.quant.config import KVQuantConfig
from fcboost.quant.mixed import quantize_key_pages

B, HKV, D, PAGE = 64, 8, 128, 2
METHODS = {
    "kivi": KVQuantConfig.kivi(),
    "kitty16": KVQuantConfig.kitty(n_boost=16),
    "static_f8_bv": KVQuantConfig.static(n_boost=16, boost_values=True),
}
# name -> pack_keys_into keywords; "default" is what the cache layers run
COMMON = {"default": {}, "v4": {"_variant": "v4"}}
VARIANTS = {
    "kivi": {
        **COMMON,
        "reload": {"_variant": "reload"},
        "c16": {"block_channels": 16},
        "c64": {"block_channels": 64},
        "w2": {"num_warps": 2},
        "w8": {"num_warps": 8},
    },
    "static_f8_bv": {
        **COMMON,
        "reload": {"_variant": "reload"},
        "u8": {"_variant": "u8"},
        "nonib": {"_variant": "nonib"},
        "c16": {"block_channels": 16},
        "c64": {"block_channels": 64},
        "w8": {"num_warps": 8},
    },
    "kitty16": {
        **COMMON,
        "rch8": {"_variant": "rch8"},
        "rch4": {"_variant": "rch4"},
        "rchall": {"_variant": "rchall"},
        "w8": {"num_warps": 8},
        "w8_rch8": {"num_warps": 8, "_variant": "rch8"},
    },
}


def setup(name: str, dev, seed: int = 2, batch: int = B):
    cfg = METHODS[name]
    P = cfg.page_size
    st = random_state(cfg, [cfg.n_sink + 4 * P + 1] * batch, HKV, D, torch.bfloat16, dev, seed=seed)
    src = torch.randn(batch, HKV, P + 1, D, device=dev, dtype=torch.bfloat16)
    rows = torch.arange(batch, dtype=torch.int32, device=dev)
    zeros = torch.zeros(batch, dtype=torch.int32, device=dev)
    page = torch.full((batch,), PAGE, dtype=torch.int32, device=dev)
    return cfg, st, src, rows, zeros, page


def reference(cfg, st, src):
    """quantize_key_pages of every row's page (B, H, 1, P, D) with the method's boosted channels."""
    P, nb = cfg.page_size, st.n_boost if st.k_hi is not None else 0
    pages = src[:, :, :P].unsqueeze(2)
    isb = None
    if st.k_idx is not None:  # Kitty: top-nb by mean |k|, ties to the lower channel (stable sort)
        score = pages.float().abs().mean(-2)  # (B, H, 1, D)
        top = score.sort(dim=-1, descending=True, stable=True).indices[..., :nb]
        isb = torch.zeros_like(score, dtype=torch.bool).scatter_(-1, top, True)
    elif st.k_hi is not None:  # static mask (H, nb) -> (H, 1, D)
        isb = torch.zeros(HKV, D, dtype=torch.bool, device=src.device)
        isb.scatter_(-1, st.boost_idx.long(), True)
        isb = isb.unsqueeze(1)
    return quantize_key_pages(pages, cfg.key_bits, cfg.boost_bits, isb, nb)


def mismatches(st, ref) -> dict:
    out = {}
    pairs = [("lo", st.k_lo, ref.lo), ("scale", st.k_scale, ref.scale), ("zero", st.k_zero, ref.zero)]
    if st.k_hi is not None:
        pairs.append(("hi", st.k_hi, ref.hi))
    if st.k_idx is not None:
        pairs.append(("idx", st.k_idx, ref.idx.to(torch.int16)))
    for n, got, want in pairs:
        bad = int((got[:, :, PAGE] != want[:, :, 0]).sum())
        if bad:
            out[n] = bad
    return out


def clear_page(st) -> None:
    for a in (st.k_lo, st.k_hi, st.k_idx, st.k_scale, st.k_zero):
        if a is not None:
            a[:, :, PAGE].zero_()


def gpu(args) -> dict:
    """Checks and timings on the GPU; without one (the interpreter), checks only."""
    from fcboost.kernels.timing import graph_us

    timed = torch.cuda.is_available()
    dev = torch.device("cuda" if timed else "cpu")
    res = {
        "device": torch.cuda.get_device_name(dev) if timed else "cpu (interpreter, no timings)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "command": " ".join(sys.argv),
        "commit": os.environ.get("FCBOOST_COMMIT", "unknown"),
        "shape": {"batch": args.batch, "kv_heads": HKV, "head_dim": D, "dtype": "bfloat16"},
        "timing": "median of CUDA-graph replays of one call (do_bench, L2 flushed)",
    }
    if timed:  # the harness's floor: a graph of one 1-element kernel
        one = torch.zeros(1, device=dev)
        res["graph_floor_us"] = graph_us(lambda: one.add_(1), args.rep_ms)
    out = []
    for name in args.methods:
        cfg, st, src, rows, zeros, page = setup(name, dev, batch=args.batch)
        ref = reference(cfg, st, src)
        for vname, kw in VARIANTS[name].items():
            if args.variants and vname not in args.variants:
                continue
            clear_page(st)
            pack_keys_into(st, src, rows, zeros, page, **kw)
            bad = mismatches(st, ref)
            row = {"method": name, "variant": vname, "kwargs": kw, "bitwise_ok": not bad, "mismatches": bad}
            if timed:
                row["key_page_us"] = graph_us(
                    partial(pack_keys_into, st, src, rows, zeros, page, **kw), args.rep_ms
                )
            print(json.dumps(row), flush=True)
            out.append(row)
    res["results"] = out
    return res


# ------------------------------------------------------------------------------------------ offline
_PTR = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.uint8: "*u8",
        torch.int16: "*i16", torch.int32: "*i32"}  # fmt: skip


def compile_sm90(kernel, args, consts):
    """The kernel as the launcher specializes it for these arguments (16-byte aligned pointers, ints
    divisible by 16 marked so unless ``do_not_specialize``), compiled for sm_90 with inline PTX on."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    consts = {**consts, "ASM": True} if "ASM" in consts else dict(consts)
    opts = {k: consts.pop(k) for k in ("num_warps", "enable_fp_fusion")}
    names = [n for n in kernel.arg_names if n not in consts]
    dns = {kernel.arg_names[x] if isinstance(x, int) else x for x in (kernel.do_not_specialize or ())}
    sig, attrs = {}, {}
    for i, n in enumerate(kernel.arg_names):
        if n in consts:
            sig[n] = "constexpr"
            continue
        a = args[names.index(n)]
        if isinstance(a, torch.Tensor):
            sig[n] = _PTR[a.dtype]
            div = a.data_ptr() % 16 == 0
        else:
            sig[n] = "i32" if abs(a) < 2**31 else "i64"
            div = a % 16 == 0 and n not in dns
        if div:
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)


def sass_stats(cubin: bytes) -> dict:
    """Registers, stack, SASS instructions (all; main: without the division slow-path subroutine and
    NOPs) and the bodies of the backward branches (loops)."""
    from sass_stats import disassemble  # benchmarks/ (the script's directory)

    regs, stack, lines = disassemble(cubin)
    total, main, in_sub = 0, 0, False
    ops = collections.Counter()
    for x in lines:
        if ".type" in x and "__internal" in x:
            in_sub = True
        mm = re.match(r"\s*/\*[0-9a-f]{4,6}\*/\s*(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", x)
        if not mm:
            continue
        total += 1
        if mm.group(1) != "NOP" and not in_sub:
            main += 1
            ops[mm.group(1)] += 1
    loops = []
    for i, x in enumerate(lines):
        b = re.search(r"BRA\s+(?:!?U?P\d+,\s*)?`\(\.(L_x_\d+)\)", x)
        start = next((k for k, y in enumerate(lines) if b and y.strip() == f".{b.group(1)}:"), None)
        if start is not None and start < i:
            body = [
                y for y in lines[start : i + 1] if re.match(r"\s*/\*[0-9a-f]{4,6}\*/", y) and "NOP" not in y
            ]
            if len(body) > 2:
                loops.append(len(body))
    return dict(regs=regs, stack=stack, sass=total, main=main, loops=loops,
                ops=ops.most_common(10))  # fmt: skip


def offline(args) -> dict:
    out = []
    for name in args.methods:
        cfg, st, src, rows, zeros, page = setup(name, "cpu")
        for vname, kw in VARIANTS[name].items():
            if args.variants and vname not in args.variants:
                continue
            plan = _key_pack_plan(src, rows, zeros, page, **key_storage(st), **kw)
            kernel, grid, kargs, consts = plan
            s = sass_stats(compile_sm90(kernel, kargs, consts).asm["cubin"])
            # executed per thread, estimated: loop bodies times their trip counts (the codes pass's
            # row chunks: byte rows / RCH; Kitty's bit search: about 20 bits on random data)
            rl = cfg.page_size * cfg.key_bits // 8
            dyn = s["main"]
            for body in s["loops"]:
                if body > 100 and consts.get("RCH", rl) < rl:
                    dyn += (rl // consts["RCH"] - 1) * body
                elif consts.get("DYN") and "RCH" in consts:
                    dyn += 19 * body
            warps = consts["num_warps"] * grid[2]
            row = {"method": name, "variant": vname, "kernel": kernel.fn.__name__, "warps_per_page_head": warps,
                   **s, "per_thread_est": dyn, "warp_instr_per_page_head": dyn * warps}  # fmt: skip
            print(json.dumps(row), flush=True)
            out.append(row)
    return {"command": " ".join(sys.argv), "triton": triton.__version__, "target": "sm_90", "results": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="JSON file to write")
    ap.add_argument("--sass", action="store_true", help="offline: compile for sm_90 and count SASS")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--variants", nargs="+", help="only these variant names")
    ap.add_argument("--rep-ms", type=int, default=60)
    ap.add_argument("--batch", type=int, default=B, help="rows (GPU timings: keep 64, the benchmark's)")
    args = ap.parse_args()
    t0 = time.time()
    res = offline(args) if args.sass else gpu(args)
    res["wall_s"] = time.time() - t0
    if args.out:
        write_json(args.out, res)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
