"""Compile every kernel variant for sm_90 (Hopper) without a GPU; run as a script (no TRITON_INTERPRET).

Catches what the interpreter accepts but the compiler rejects (branch type mismatches, builtins
that need tensors). Prints one line per kernel variant.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fcboost.kernels import attention_page as ap
from fcboost.kernels import attention_rest as ar
from fcboost.kernels import quant_pack as qp

TARGET = GPUTarget("cuda", 90, 32)


def build(fn, ptr_types: dict, consts: dict, **opts):
    names = fn.arg_names
    sig = {}
    for n in names:
        sig[n] = "constexpr" if n in consts else ptr_types.get(n, "fp32" if n == "qk_scale" else "i32")
    src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in consts.items()})
    return triton.compile(src, target=TARGET, options=opts)


def usage(k) -> str:
    """Registers and spill stack of a compiled kernel, from its cubin (Triton's bundled cuobjdump)."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return f"{m.group(1)} registers, {m.group(2)} B stack" if m else "usage unknown"


def main() -> None:
    for dt in ("*bf16", "*fp16"):
        ptrs = dict(
            Q=dt,
            SK=dt,
            SV=dt,
            KB=dt,
            VW=dt,
            KN=dt,
            VN=dt,
            KLO="*u8",
            KHI="*u8",
            KIDX="*i16",
            KSC="*fp16",
            KZR="*fp16",
            VLO="*u8",
            VHI="*u8",
            VIDX="*i16",
            VSC="*fp16",
            VZR="*fp16",
            NREAL="*i32",
            NPAGES="*i32",
            NVQ="*i32",
            O_ACC="*fp32",
            O_M="*fp32",
            O_L="*fp32",
        )
        for kb, vb, kdyn, R, D, new in [
            (False, False, False, 32, 128, True),
            (True, False, True, 16, 64, False),
            (True, True, False, 32, 128, True),
        ]:
            nb = 16 if kb else 0
            page = dict(GQ=4, BM=16, D=D, P=128, R=R, NB=nb, NBP=16, NBQ=8, KBOOST=kb, VBOOST=vb, ASM=True)
            build(ap._page_kernel, ptrs, page, num_warps=4, num_stages=3, **({} if vb else {"maxnreg": 128}))
            rest = dict(GQ=4, BM=16, D=D, S=32, P=128, BN=4 * R, BT=32, NB=nb, NBP=16, KBOOST=kb, VBOOST=vb,
                        PAGED=True, HAS_NEW=new, KDYN=kdyn)  # fmt: skip
            build(ar._rest_kernel, ptrs, rest, num_warps=4, num_stages=1)
            for stages in (1, 2):  # the split rest kernel (the default) with and without pipelining
                split = {k: v for k, v in rest.items() if k != "BT"}
                split.update(BTF=64, BTQ=32, NBV=32, STAGES=stages, ALIGNED=True, PART=0, MIXED=False)
                k = build(ar._rest_split_kernel, ptrs, split, num_warps=4, num_stages=stages)
                print("rest split", dt, kb, vb, kdyn, D, f"stages {stages}:", usage(k), flush=True)
            for part, mixed in ((1, False), (2, False), (0, True), (2, True)):  # two launches; mixed pages
                split = {k: v for k, v in rest.items() if k != "BT"}
                split.update(BTF=64, BTQ=32, NBV=32, STAGES=1, ALIGNED=True, PART=part, MIXED=mixed)
                k = build(ar._rest_split_kernel, ptrs, split, num_warps=4, num_stages=1)
                print("rest split", dt, kb, vb, kdyn, D, f"part {part} mixed {mixed}:", usage(k), flush=True)
            print("decode", dt, kb, vb, R, D, flush=True)
        build(
            ar._combine_kernel,
            dict(O_ACC="*fp32", O_M="*fp32", O_L="*fp32", OUT=dt),
            dict(GQ=4, NSP=32, D=128),
        )
        print("combine", dt, flush=True)
    pk = dict(
        src="*bf16",
        rows="*i32",
        src_tok="*i32",
        dst_page="*i32",
        lo="*u8",
        hi="*u8",
        idx="*i16",
        scale="*fp16",
        zero="*fp16",
    )
    for boost, dyn in ((False, False), (True, False), (True, True)):
        k = build(
            qp._pack_key_page_kernel,
            pk,
            dict(P=128, D=128, BITS=2, BOOST_BITS=4, HBITS=2, NB=16 if boost else 0, NB_PAD=16, BOOST=boost,
                 DYN=dyn, BC=128 if dyn else 32),
            num_warps=4,
            enable_fp_fusion=False,
        )  # fmt: skip
        print("pack keys", "kitty" if dyn else "static" if boost else "kivi", usage(k), flush=True)
    pv = dict(
        src="*bf16",
        rows="*i32",
        src_tok="*i32",
        dst_tok="*i32",
        count="*i32",
        lo="*u8",
        hi="*u8",
        idx="*i16",
        scale="*fp16",
        zero="*fp16",
    )
    for boost, BT in ((False, 16), (True, 16), (False, 2), (True, 2)):
        k = build(
            qp._pack_values_kernel,
            pv,
            dict(
                D=128,
                BITS=2,
                BOOST_BITS=4,
                HBITS=2,
                NB=16 if boost else 0,
                NB_PAD=16,
                NHB=4 if boost else 1,
                BOOST=boost,
                BT=BT,
            ),
            num_warps=1 if BT <= 4 else 4,
        )
        print("pack values", boost, BT, usage(k), flush=True)
    # the Gluon page kernel (no boost, Kitty keys, static keys, static keys + values), as the launcher
    # specializes it: 16-byte aligned pointers and strides (its cp.async copies need them)
    from triton.experimental.gluon._runtime import GluonASTSource

    from fcboost.kernels import attention_page_gluon as apg
    from fcboost.kernels import attention_rest_gluon as arg

    fn = apg._page_kernel_gluon
    gp = dict(Q="*bf16", KLO="*u8", KSC="*fp16", KZR="*fp16", VLO="*u8", VSC="*fp16", VZR="*fp16", KHI="*u8",
              KIDX="*i16", VHI="*u8", NPAGES="*i32", NVQ="*i32", O_ACC="*fp32", O_M="*fp32", O_L="*fp32",
              VW="*bf16")  # fmt: skip
    for kb, vb, dup, mixed, name in (
        (False, False, False, False, "kivi"),
        (True, False, False, False, "kitty / static keys"),
        (True, True, True, False, "static"),  # GQA 4: the heads repeated in columns 4-7 (the default)
        (True, True, False, False, "static, GQA > 4"),
        (False, False, False, True, "kivi, mixed pages"),
        (True, True, True, True, "static, mixed pages"),
    ):
        consts = dict(GQ=4, D=128, KBOOST=kb, VBOOST=vb, STAGES=2, DUP=dup, MIXED=mixed)
        sig = {
            n: "constexpr" if n in consts else gp.get(n, "fp32" if n == "qk_scale" else "i32")
            for n in fn.arg_names
        }
        aligned = {
            (i,): [["tt.divisibility", 16]]
            for i, n in enumerate(fn.arg_names)
            if n in gp or n.startswith("s_")  # (k_idx strides too: gluon_unsupported checks them)
        }
        k = triton.compile(
            GluonASTSource(fn, sig, constexprs=consts, attrs=aligned),
            target=TARGET,
            options=dict(num_warps=1, **({} if vb or mixed else {"maxnreg": 168})),  # the launcher's caps
        )
        print(f"gluon page ({name})", usage(k), f"{k.metadata.shared} B shared", flush=True)
    fn = arg._rest16_kernel_gluon  # the rest's 16-bit tokens (_rest={"parts": 2, "impl16": "gluon"})
    rp = dict(Q="*bf16", SK="*bf16", SV="*bf16", KB="*bf16", VW="*bf16", KN="*bf16", VN="*bf16", NREAL="*i32",
              NPAGES="*i32", NVQ="*i32", O_ACC="*fp32", O_M="*fp32", O_L="*fp32")  # fmt: skip
    for BT, D in ((64, 128), (32, 128), (16, 64)):
        consts = dict(GQ=4, D=D, S=32, P=128, BT=BT, HAS_NEW=True)
        sig = {
            n: "constexpr" if n in consts else rp.get(n, "fp32" if n == "qk_scale" else "i32")
            for n in fn.arg_names
        }
        aligned = {
            (i,): [["tt.divisibility", 16]]
            for i, n in enumerate(fn.arg_names)
            if n in rp or n.startswith("s_")
        }
        k = triton.compile(
            GluonASTSource(fn, sig, constexprs=consts, attrs=aligned),
            target=TARGET,
            options=dict(num_warps=1),
        )
        print(f"gluon rest16 (BT {BT}, D {D})", usage(k), f"{k.metadata.shared} B shared", flush=True)
    # the key-page pack kernel the launcher picks (the pair kernel for bf16 keys), specialized on the
    # arguments of a batch-64 page as benchmarks/pack_probe.py builds them
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "pack_probe.py"
    spec = importlib.util.spec_from_file_location("pack_probe", path)
    pp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pp)
    for name in pp.METHODS:
        _, st, src, rows, zeros, page = pp.setup(name, "cpu", batch=4)
        kernel, _, kargs, consts = qp._key_pack_plan(src, rows, zeros, page, **qp.key_storage(st))
        k = pp.compile_sm90(kernel, kargs, consts)
        print("pack keys (default)", name, kernel.fn.__name__, usage(k), flush=True)
    print("ALL COMPILED")


if __name__ == "__main__":
    main()
