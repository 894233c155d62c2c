"""GPU: where the time of one ``decode_attention`` call goes, kernel by kernel.

Replays a CUDA graph of the call (as ``scripts/bench_attention.py`` times it) under the PyTorch
profiler with the L2 flushed between replays, and reports per replay the durations of the page
kernel, the rest kernel (on its side stream, beside the page kernel) and the combine, and the span
from the first kernel's start to the last one's end; medians over the replays. Imports only torch,
triton and fcboost.

    python benchmarks/attention_timeline.py --out timeline.json [--methods kivi,static_f8_bv]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial

import torch
import triton

from fcboost.experiment.results import write_json
from fcboost.kernels.decode_attention import decode_attention
from fcboost.kernels.state import random_state
from fcboost.kernels.timing import capture_graph
from fcboost.quant.config import KVQuantConfig

HQ, HKV, D = 32, 8, 128
SHAPES = [(1, 32768), (8, 32768), (32, 8192), (64, 4096), (8, 131072)]
METHODS = {
    "kivi": KVQuantConfig.kivi(),
    "kitty16": KVQuantConfig.kitty(n_boost=16),
    "static_f8_bv": KVQuantConfig.static(n_boost=16, boost_values=True),
}
ROLES = {
    "_page_kernel": "page",
    "_rest16": "rest16",
    "_rest": "rest",
    "_combine_kernel": "combine",
}  # first match; a second page-kernel launch in a replay is the mixed pages' ("mixed", _gluon={"mixed": True})


def _role(name: str) -> str | None:
    return next((r for k, r in ROLES.items() if k in name), None)


def timeline(fn, reps: int = 20) -> dict:
    """Median per-kernel durations and span (us) of ``fn`` replayed from a CUDA graph."""
    g = capture_graph(fn)
    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(reps):
            flush.zero_()
            torch.cuda.synchronize()
            g.replay()
            torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            ev = json.load(f)["traceEvents"]
    ks = sorted(
        (e["ts"], e["dur"], _role(e["name"]))
        for e in ev
        if e.get("cat") == "kernel" and _role(e.get("name", ""))
    )
    # one replay: a combine closes it
    runs, cur = [], []
    for k in ks:
        cur.append(k)
        if k[2] == "combine":
            runs.append(cur)
            cur = []
    for r in runs:  # the later of two page-kernel launches: the mixed pages'
        pages = [i for i, k in enumerate(r) if k[2] == "page"]
        if len(pages) == 2:
            i = max(pages, key=lambda i: r[i][0])
            r[i] = (r[i][0], r[i][1], "mixed")
    out: dict = {"replays": len(runs)}
    if not runs:
        return out
    for role in ("page", "mixed", "rest", "rest16", "combine"):
        if not any(k[2] == role for r in runs for k in r):
            continue
        d = [sum(k[1] for k in r if k[2] == role) for r in runs]
        out[f"{role}_us"] = statistics.median(d)
    out["span_us"] = statistics.median(max(k[0] + k[1] for k in r) - min(k[0] for k in r) for r in runs)

    def gap(r, a, b):  # start of b after the end of a
        ea = max((k[0] + k[1] for k in r if k[2] == a), default=None)
        sb = min((k[0] for k in r if k[2] == b), default=None)
        return None if ea is None or sb is None else sb - ea

    for role in ("rest", "rest16"):  # how long a rest part runs on after the page kernel
        v = [
            max(k[0] + k[1] for k in r if k[2] == role) - max(k[0] + k[1] for k in r if k[2] == "page")
            for r in runs
            if any(k[2] == "page" for k in r) and any(k[2] == role for k in r)
        ]
        if v:
            out[f"{role}_end_after_page_us"] = statistics.median(v)
    for a, b in (
        ("page", "mixed"),
        ("mixed", "combine"),
        ("page", "combine"),
        ("rest", "combine"),
        ("rest16", "combine"),
    ):
        v = [x for x in (gap(r, a, b) for r in runs) if x is not None]
        if v:
            out[f"gap_{a}_{b}_us"] = statistics.median(v)
    v = [
        min(k[0] for k in r if k[2] == "page") - min(k[0] for k in r if k[2] == "rest")
        for r in runs
        if any(k[2] == "page" for k in r) and any(k[2] == "rest" for k in r)
    ]
    if v:
        out["page_start_after_rest_us"] = statistics.median(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument(
        "--variant", action="append", default=[], metavar="NAME=JSON",
        help='also these decode_attention keywords, e.g. rest_first=\'{"_launch": {"order": "rest"}}\'',
    )  # fmt: skip
    args = ap.parse_args()
    dev = torch.device("cuda")
    res = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "triton": triton.__version__,
           "command": " ".join(sys.argv), "commit": os.environ.get("FCBOOST_COMMIT", "unknown"), "rows": []}  # fmt: skip
    variants = {"default": {}}
    for v in args.variant:
        name, _, kw = v.partition("=")
        variants[name] = json.loads(kw)
    t0 = time.time()
    for B, T in SHAPES:
        q = torch.randn(B, HQ, D, device=dev, dtype=torch.bfloat16)
        kn, vn = (torch.randn(B, HKV, D, device=dev, dtype=torch.bfloat16) for _ in range(2))
        for m in args.methods.split(","):
            cfg = METHODS[m]
            st = random_state(cfg, [T - 1] * B, HKV, D, torch.bfloat16, dev, seed=1)
            mt = int((torch.minimum(st.n_pages * cfg.page_size, st.n_vq) // 64).max())
            for name, kw in variants.items():
                row = {"method": m, "batch": B, "context": T, "variant": name, "kwargs": kw}
                row.update(
                    timeline(partial(decode_attention, q, st, D**-0.5, kn, vn, max_tiles=mt, **kw), args.reps)
                )
                res["rows"].append(row)
                print(
                    m,
                    f"{B}x{T}",
                    {k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()},
                    flush=True,
                )
            write_json(args.out, res)
    res["wall_s"] = time.time() - t0
    write_json(args.out, res)


if __name__ == "__main__":
    main()
