"""GPU: the Gluon page kernel (``page_impl="gluon"``) vs the Triton one, per method, over its knobs
(cp.async pipeline depth, register cap).

Correctness of every variant against the PyTorch reference on ragged rows (fp16, bf16), then
CUDA-graph timings of the whole ``decode_attention`` (page + rest + combine) at the benchmark shapes
with bf16 SDPA on the unquantized cache in the same run. Imports only torch, triton and fcboost.
``python benchmarks/gluon_probe.py --out probe.json --stages 2,3 --regs 168``

``--old-kernel [NAME=]FILE`` (repeatable): also time (and check) another version of
``attention_page_gluon.py`` (e.g. ``git show <commit>:fcboost/kernels/attention_page_gluon.py >
old.py``, or an experiment under ``benchmarks/variants/``) as variant ``gluon_NAME`` (default name
``old``), for an A/B in one run; ``--old-kw KW=JSON`` (repeatable): instead, variants
``gluon_NAME_KW`` of each with these ``decode_attention`` keywords.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from functools import partial

import torch
import torch.nn.functional as F
import triton

from fcboost.experiment.results import write_json
from fcboost.kernels.decode_attention import decode_attention, decode_attention_reference
from fcboost.kernels.state import random_state
from fcboost.kernels.timing import graph_us
from fcboost.quant.config import KVQuantConfig

HQ, HKV, D = 32, 8, 128
SHAPES = [(1, 32768), (8, 32768), (32, 8192), (64, 4096), (8, 131072)]

METHODS = {
    "kivi": KVQuantConfig.kivi(),
    "kitty16": KVQuantConfig.kitty(n_boost=16),
    "static_f8_keys": KVQuantConfig.static(n_boost=16, boost_values=False),
    "static_f8_bv": KVQuantConfig.static(n_boost=16, boost_values=True),
}


def gluon_variants(stages=(2,), regs=(168,)) -> dict:
    """The Gluon page kernel's variants: pipeline depths x register caps."""
    return {
        f"gluon_s{n}_r{r}": {"page_impl": "gluon", "_gluon": {"stages": n, "maxnreg": r}}
        for n in stages
        for r in regs
    }


def _load_old(path: str, name: str = "old"):
    """Another version of the Gluon page kernel module, loaded from ``path``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"attention_page_gluon_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _OldKernel:
    """The old module's page kernel launched with only the keywords it knows (the launcher may pass
    constexprs added since). Positional arguments are passed as they are: the old kernel must take the
    launcher's (since 485a707: ``SLOT0`` and the value window after ``NSLOT``)."""

    def __init__(self, fn):
        self.fn = fn

    def __getitem__(self, grid):
        keep = set(self.fn.arg_names) | {"num_warps", "num_stages", "maxnreg"}
        launch = self.fn[grid]
        return lambda *a, **kw: launch(*a, **{k: v for k, v in kw.items() if k in keep})


def _call(kw: dict, olds: dict, *args, **kwargs):
    """``decode_attention`` with ``kw``; ``_old`` in kw: with that module's page kernel (``olds``, by
    name) swapped in (``decode_attention`` imports the kernel at each call)."""
    import fcboost.kernels.attention_page_gluon as apg

    kw = dict(kw)
    kw.pop("_per_sm", None)  # (correctness: the default split)
    name = kw.pop("_old", None)
    if name is None:
        return decode_attention(*args, **kwargs, **kw)
    new = apg._page_kernel_gluon
    apg._page_kernel_gluon = _OldKernel(olds[name]._page_kernel_gluon)
    try:
        return decode_attention(*args, **kwargs, **kw)
    finally:
        apg._page_kernel_gluon = new


def rel(a, ref) -> float:
    return float((a.float() - ref).norm() / ref.norm())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--stages", default="2", help="cp.async pipeline depths (comma list)")
    ap.add_argument("--regs", default="168", help="register caps (comma list; 0: none)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument(
        "--rest-only", action="store_true", help="also time rest + combine alone (no page kernel)"
    )
    ap.add_argument(
        "--old-kernel", action="append", default=[], metavar="[NAME=]FILE",
        help="another attention_page_gluon.py to A/B against (repeatable)",
    )  # fmt: skip
    ap.add_argument(
        "--per-sm", default="", help="split counts aiming at N page programs per SM (comma list; default 32)"
    )
    ap.add_argument(
        "--old-kw",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="with --old-kernel: variants gluon_NAME_KW of each with these decode_attention keywords, e.g. "
        's4=\'{"_gluon": {"stages": 4}}\' (repeatable; none: one variant gluon_NAME with the defaults)',
    )
    ap.add_argument(
        "--variant", action="append", default=[], metavar="NAME=JSON",
        help='a Gluon variant with these decode_attention keywords, e.g. nodup=\'{"_gluon": {"dup": false}}\' '
        "(repeatable)",
    )  # fmt: skip
    args = ap.parse_args()
    olds = {}
    for v in args.old_kernel:
        name, _, path = v.rpartition("=")
        olds[name or "old"] = _load_old(path, name or "old")
    methods = {k: METHODS[k] for k in args.methods.split(",")}
    variants = {"triton": {"page_impl": "triton"}}
    variants.update(
        gluon_variants(
            [int(x) for x in args.stages.split(",")],
            [int(x) for x in args.regs.split(",")],
        )
    )
    for name in olds:
        if not args.old_kw:
            variants[f"gluon_{name}"] = {"page_impl": "gluon", "_old": name}
        for v in args.old_kw:
            kwname, _, knobs = v.partition("=")
            variants[f"gluon_{name}_{kwname}"] = {"page_impl": "gluon", "_old": name, **json.loads(knobs)}
    for v in args.variant:
        name, _, knobs = v.partition("=")
        variants[f"gluon_{name}"] = {"page_impl": "gluon", **json.loads(knobs)}
    for n in [int(x) for x in args.per_sm.split(",") if x]:
        variants[f"gluon_ps{n}"] = {"page_impl": "gluon", "_per_sm": n}
    t0 = time.time()
    dev = torch.device("cuda")
    scaling = D**-0.5
    res = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "triton": triton.__version__,
           "command": " ".join(sys.argv), "commit": os.environ.get("FCBOOST_COMMIT", "unknown"),
           "correctness": [], "timing": []}  # fmt: skip
    for mname, mcfg in methods.items():
        for dt in (torch.float16, torch.bfloat16):
            lengths = [32768, 4097, 1000, 289, 161, 33, 1]
            st = random_state(mcfg, lengths, HKV, D, dt, dev, seed=3)
            B = len(lengths)
            q = torch.randn(B, HQ, D, device=dev, dtype=dt)
            kn, vn = (torch.randn(B, HKV, D, device=dev, dtype=dt) for _ in range(2))
            ref = decode_attention_reference(q, st, scaling, kn, vn)
            e = {}
            for k, kw in variants.items():
                try:
                    e[k] = rel(_call(kw, olds, q, st, scaling, kn, vn), ref)
                except ValueError as err:  # a variant that cannot serve the call (its message kept)
                    e[k] = float("nan")
                    res.setdefault("errors", {})[f"{k} correctness {dt}"] = str(err)
            res["correctness"].append({"method": mname, "dtype": str(dt), "lengths": lengths, "rel_l2": e})
            print("correct", mname, dt, {k: f"{v:.2e}" for k, v in e.items()}, flush=True)
    dtype = torch.bfloat16
    for B, T in SHAPES:
        q = torch.randn(B, HQ, D, device=dev, dtype=dtype)
        kn, vn = (torch.randn(B, HKV, D, device=dev, dtype=dtype) for _ in range(2))
        kf = torch.randn(B, HKV, T, D, device=dev, dtype=dtype)
        sdpa = graph_us(partial(F.scaled_dot_product_attention, q[:, :, None], kf, torch.randn_like(kf),
                                scale=scaling, enable_gqa=True))  # fmt: skip
        del kf
        for mname, mcfg in methods.items():
            st = random_state(mcfg, [T - 1] * B, HKV, D, dtype, dev, seed=1)
            mt = int((torch.minimum(st.n_pages * mcfg.page_size, st.n_vq) // 64).max())
            row = {"method": mname, "batch": B, "context": T, "sdpa_us": sdpa, "variants": {}}
            n_sm = torch.cuda.get_device_properties(dev).multi_processor_count
            for key, kw in variants.items():
                if "_per_sm" in kw:  # the launcher's Gluon split rule with another target
                    kw = dict(kw)
                    ns = min(max(1, round(kw.pop("_per_sm") * n_sm / (B * HKV))), max(1, mt // 4))
                    kw["n_splits"] = ns
                    row.setdefault("splits", {})[key] = ns
                fn = partial(_call, kw, olds, q, st, scaling, kn, vn, max_tiles=mt)
                try:
                    row["variants"][key] = {"us": graph_us(fn)}
                except ValueError as err:
                    row["variants"][key] = {"us": float("nan"), "error": str(err)}
            if args.rest_only:  # no page programs: what the rest and combine kernels cost alone
                fn = partial(decode_attention, q, st, scaling, kn, vn, max_tiles=mt, n_splits=0)
                row["rest_only_us"] = graph_us(fn)
            best = min(
                (v["us"], k)
                for k, v in row["variants"].items()
                if k.startswith("gluon") and not math.isnan(v["us"])
            )
            tri = row["variants"]["triton"]["us"]
            print(f"{mname} {B}x{T}: sdpa {sdpa:.1f} triton {tri:.1f} gluon best {best[0]:.1f} ({best[1]}, "
                  f"{sdpa / best[0]:.2f}x) rest only {row.get('rest_only_us', float('nan')):.1f}",
                  {k: round(v["us"], 1) for k, v in row["variants"].items()}, flush=True)  # fmt: skip
            res["timing"].append(row)
            write_json(args.out, res)
    res["wall_s"] = time.time() - t0
    write_json(args.out, res)


if __name__ == "__main__":
    main()
