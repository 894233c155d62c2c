"""Offline (no GPU) cost model of the decode-attention page loop: compile for sm_90, count SASS.

Compiles ``_page_kernel`` for Hopper with Triton's bundled ptxas, as the launcher would specialise
it (16-byte aligned pointers, strides divisible by 16), and reports per method: registers, spill
stack, shared memory, and the instructions of the page-tile loop (the body of its longest backward
branch) by opcode. The issue floor of a shape is ``tiles x warps x loop instructions /
(SMs x 4 schedulers x clock)``. A proxy for comparing kernel variants before spending GPU time; the
device's Triton version may schedule differently.

    python benchmarks/sass_stats.py [--methods kivi kitty static] [--num-stages 3]
    python benchmarks/sass_stats.py --gluon      # the Gluon page kernel (one warp; loop = one 128-token page)
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fcboost.kernels import attention_page as ap

PTRS = {"Q": "*bf16", "KLO": "*u8", "KHI": "*u8", "VLO": "*u8", "VHI": "*u8", "KIDX": "*i16", "VIDX": "*i16",
        "KSC": "*fp16", "KZR": "*fp16", "VSC": "*fp16", "VZR": "*fp16", "NPAGES": "*i32", "NVQ": "*i32",
        "O_ACC": "*fp32", "O_M": "*fp32", "O_L": "*fp32", "VW": "*bf16"}  # fmt: skip
NOT_DIV16 = {"s_vst", "H", "NSPLIT", "NSLOT"}  # runtime ints not specialised as multiples of 16


def _specialize(fn, consts: dict, not_div16: set = NOT_DIV16) -> tuple[dict, dict]:
    """Signature and attributes as the launcher specializes ``fn``: pointers from ``PTRS``, runtime
    ints and pointers divisible by 16 except ``not_div16``."""
    names = fn.arg_names
    sig = {
        n: "constexpr" if n in consts else PTRS.get(n, "fp32" if n == "qk_scale" else "i32") for n in names
    }
    attrs = {
        (names.index(n),): [["tt.divisibility", 16]]
        for n in names
        if n not in consts and n != "qk_scale" and n not in not_div16
    }
    return sig, attrs


def compile_page_kernel(method: str, num_warps: int, num_stages: int, maxnreg: int | None):
    boost = method in ("kitty", "static")
    consts = dict(GQ=4, BM=16, D=128, P=128, R=32, NB=16 if boost else 0, NBP=16, NBQ=8, KBOOST=boost,
                  VBOOST=method == "static", ASM=True)  # fmt: skip
    fn = ap._page_kernel
    sig, attrs = _specialize(fn, consts)
    opts = dict(num_warps=num_warps, num_stages=num_stages, **({"maxnreg": maxnreg} if maxnreg else {}))
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)


def compile_gluon_page_kernel(method: str, stages: int = 2, maxnreg: int | None = None, **extra):
    """The Gluon page kernel as ``decode_attention`` launches it (one warp, 16-byte aligned storage)."""
    from triton.experimental.gluon._runtime import GluonASTSource

    from fcboost.kernels import attention_page_gluon as apg

    fn = apg._page_kernel_gluon
    static = method == "static"  # the launcher's defaults for GQ <= 4
    consts = dict(GQ=4, D=128, KBOOST=method != "kivi", VBOOST=static, STAGES=stages, DUP=static, MIXED=False)
    consts.update(extra)
    sig, attrs = _specialize(fn, consts)  # k_idx strides: multiples of 16 (16 slots; gluon_unsupported)
    src = GluonASTSource(fn, sig, constexprs=consts, attrs=attrs)
    if maxnreg is None:  # the launcher's default: uncapped with boosted values, else 168
        maxnreg = 0 if method == "static" else 168
    opts = dict(num_warps=1, **({"maxnreg": maxnreg} if maxnreg else {}))
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def disassemble(cubin: bytes) -> tuple[int, int, list[str]]:
    """Registers, spill stack (bytes) and SASS lines of a cubin (Triton's bundled cuobjdump, nvdisasm)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res = subprocess.run(
            [_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True
        ).stdout
        sass = subprocess.run([_tool("nvdisasm"), "-c", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", res)
    return int(m.group(1)), int(m.group(2)), sass.splitlines()


def loop_stats(cubin: bytes) -> dict:
    regs, stack, lines = disassemble(cubin)
    best: list[str] = []
    for i, line in enumerate(lines):  # the longest backward conditional branch is the page loop
        b = re.search(r"@!?P\d+\s+BRA\s+`\(\.(L_x_\d+)\)", line)
        if not b:
            continue
        start = next((k for k, x in enumerate(lines) if x.strip() == f".{b.group(1)}:"), None)
        if start is not None and start < i:
            body = [x for x in lines[start : i + 1] if re.match(r"\s*/\*[0-9a-f]{4,6}\*/", x)]
            best = body if len(body) > len(best) else best
    ops = collections.Counter()
    for x in best:
        op = re.sub(r"^@!?U?P\w+\s+", "", re.sub(r"^\s*/\*[0-9a-f]+\*/\s*", "", x)).split()[0]
        ops[op.split(".")[0]] += 1
    return dict(regs=regs, stack=stack, loop=sum(ops.values()), ops=ops.most_common(12))


def main() -> None:
    ap_ = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap_.add_argument("--methods", nargs="+", default=["kivi", "kitty", "static"])
    ap_.add_argument("--num-warps", type=int, default=4)
    ap_.add_argument("--num-stages", type=int, default=3)
    ap_.add_argument("--gluon", action="store_true", help="the Gluon page kernel instead of the Triton one")
    a = ap_.parse_args()
    if a.gluon:  # kitty and static keys share the code (the channel map's page stride differs)
        for method in a.methods:
            k = compile_gluon_page_kernel(method)
            s = loop_stats(k.asm["cubin"])
            print(f"gluon {method}: {s['regs']} registers, {s['stack']} B stack, {k.metadata.shared} B shared, "
                  f"page loop {s['loop']} instructions per warp and 128-token page: {s['ops']}")  # fmt: skip
        return
    for method in a.methods:
        maxnreg = None if method == "static" else 128  # the launcher's defaults
        k = compile_page_kernel(method, a.num_warps, a.num_stages, maxnreg)
        s = loop_stats(k.asm["cubin"])
        print(f"{method}: {s['regs']} registers, {s['stack']} B stack, {k.metadata.shared} B shared, "
              f"page loop {s['loop']} instructions per warp and tile: {s['ops']}")  # fmt: skip


if __name__ == "__main__":
    main()
