"""End-to-end decode speed and memory on a random-weight Qwen3-8B-shaped model (bf16, one GPU).

Caches: ``dynamic`` (HF DynamicCache, eager forward per step as ``generate`` does), ``hf_static``
(HF ``generate(cache_implementation="static")`` with its automatic ``torch.compile``; opt-in via
``--caches``, compilation takes minutes), ``static_bf16``
(preallocated bf16 cache, graph-captured step, SDPA under a device length mask: the plain-bf16 path
with HF's host overhead removed), ``kivi`` / ``kitty`` / ``static`` (ours: packed 2-bit cache, fused
decode attention, device-side flushes, graph-captured step; ``static`` = random static mask of 8 pairs
with boosted values).

Per (cache, context L, batch B): one row's prompt of L random tokens is prefilled (time to first
token, batch 1), copied to the B rows (decode cost depends on lengths, not contents), then ``steps``
greedy steps run; ms/step is the mean over the steps after the first two (warm-up, capture).
Largest batch in the budget: ``floor((budget - weights) / bytes_per_row(L + steps))``, verified by
running it (peak memory reported). Writes JSON (figures, command, commit, device) after every run.

    python scripts/bench_decode.py --out benchmarks/results/decode_h200.json --steps 64 --time-budget 330
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
import traceback

import torch

from fcboost.cache.static import bytes_per_row
from fcboost.decode import FastDecoder
from fcboost.experiment.results import write_json
from fcboost.masks.mask import ChannelMask
from fcboost.models import random_model
from fcboost.quant.config import KVQuantConfig

GiB = 1024**3
OURS = ("kivi", "kitty", "static")


def qconfig(kind: str) -> KVQuantConfig | None:
    return {
        "kivi": KVQuantConfig.kivi(),
        "kitty": KVQuantConfig.kitty(n_boost=16),
        "static": KVQuantConfig.static(boost_values=True),
    }.get(kind)


def row_bytes(config, kind: str, tokens: int) -> int:
    if kind in ("dynamic", "static_bf16", "hf_static"):
        return bytes_per_row(config, None, tokens)
    return bytes_per_row(config, qconfig(kind), tokens, n_boost=16)


def max_batch(config, kind: str, tokens: int, weights: int, budget: float) -> int:
    return max(1, int((budget - weights) // row_bytes(config, kind, tokens)))


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _free():
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


_WARM: set = set()


@torch.no_grad()
def warm_up(model, kind, L, mask, chunk):
    """Once per (cache kind, context): a batch-1 prefill and two decode steps, so Triton's JIT
    compilation of the pack and attention kernels is not counted in the timed TTFT."""
    if (kind, L) in _WARM:
        return
    dec = FastDecoder(model, qconfig(kind), mask if kind == "static" else None, batch=1, max_len=L + 4,
                      max_new_tokens=3, prefill_chunk=chunk)  # fmt: skip
    try:
        dec.prefill(torch.randint(0, model.config.vocab_size, (1, L), device="cuda"), rows=[0])
        dec.decode(2)
        torch.cuda.synchronize()
    finally:
        dec.close()
        del dec
    _WARM.add((kind, L))


@torch.no_grad()
def run_ours(model, kind, L, B, steps, mask, chunk):
    qc = qconfig(kind)
    warm_up(model, kind, L, mask, chunk)
    dec = FastDecoder(
        model,
        qc,
        mask if kind == "static" else None,
        batch=B,
        max_len=L + steps + 1,
        max_new_tokens=steps + 1,
        prefill_chunk=chunk,
    )
    try:
        prompt = torch.randint(0, model.config.vocab_size, (1, L), device="cuda")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dec.prefill(prompt, rows=[0])
        torch.cuda.synchronize()
        ttft = time.perf_counter() - t0
        if B > 1:
            dec.replicate(0)
        dec.decode(2)  # eager warm-up step, capture + first replay
        torch.cuda.synchronize()
        n = steps - 2
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        h0 = time.perf_counter()
        e0.record()
        dec.decode(n)
        e1.record()
        host = time.perf_counter() - h0
        torch.cuda.synchronize()
        ms = e0.elapsed_time(e1) / n
        return dict(
            ttft_s=ttft,
            ms_per_step=ms,
            host_ms_per_step=1e3 * host / n,
            graph=dec.graph is not None,
            graph_error=dec.graph_error,
            cache_gib=dec.cache.nbytes() / GiB,
        )
    finally:
        dec.close()
        del dec


@torch.no_grad()
def run_dynamic(model, L, B, steps):
    from transformers import DynamicCache

    cache = DynamicCache()
    prompt = torch.randint(0, model.config.vocab_size, (1, L), device="cuda")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model(prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
    ids = out.logits[:, -1].argmax(-1, keepdim=True)
    torch.cuda.synchronize()
    ttft = time.perf_counter() - t0
    del out
    if B > 1:
        for layer in cache.layers:
            layer.keys = layer.keys.expand(B, -1, -1, -1).contiguous()
            layer.values = layer.values.expand(B, -1, -1, -1).contiguous()
        ids = ids.expand(B, 1).contiguous()
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        ids = out.logits[:, -1].argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    ms = 1e3 * sum(times[2:]) / max(1, len(times) - 2)
    del cache
    return dict(ttft_s=ttft, ms_per_step=ms, graph=False)


@torch.no_grad()
def run_hf_static(model, L, B, steps, compile_: bool = True):
    """HF ``generate(cache_implementation="static")``, forward compiled by transformers (the best
    plain-HF bf16 path). Two generations of different lengths share the compiled graphs; ms/step is
    their time difference over the extra steps, TTFT the rest of the shorter one."""
    ids = torch.randint(0, model.config.vocab_size, (B, L), device=model.device)
    n1, n2 = 4, 4 + steps
    kw = dict(do_sample=False, cache_implementation="static", max_cache_len=L + n2 + 1, pad_token_id=0,
              disable_compile=not compile_, attention_mask=torch.ones_like(ids))  # fmt: skip

    def timed(n):
        _sync()
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        _sync()
        assert out.shape[1] == L + n, out.shape
        return time.perf_counter() - t

    t0 = time.perf_counter()
    timed(n1)  # compile (and warm-up)
    compile_s = time.perf_counter() - t0
    t1, t2 = timed(n1), timed(n2)
    ms = 1e3 * (t2 - t1) / (n2 - n1)
    return dict(ttft_s=t1 - n1 * ms / 1e3, ms_per_step=ms, graph=compile_, compile_s=compile_s)


def profile_step(model, kind, L, mask, chunk):
    """One eager step of ours under the profiler: GPU kernel time vs host wall time, top kernels."""
    from torch.profiler import ProfilerActivity, profile

    dec = FastDecoder(
        model,
        qconfig(kind),
        mask if kind == "static" else None,
        batch=1,
        max_len=L + 8,
        max_new_tokens=8,
        prefill_chunk=chunk,
        use_graph=False,
    )
    try:
        dec.prefill(torch.randint(0, model.config.vocab_size, (1, L), device="cuda"))
        dec.decode(2)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t = time.perf_counter()
            dec.decode(1)
            torch.cuda.synchronize()
            wall = time.perf_counter() - t
        ev = [e for e in prof.key_averages() if e.device_time_total > 0]
        ev.sort(key=lambda e: -e.self_device_time_total)
        gpu = sum(e.self_device_time_total for e in ev) / 1e3
        top = [dict(name=e.key[:80], ms=e.self_device_time_total / 1e3, calls=e.count) for e in ev[:12]]
        return dict(kind=kind, L=L, eager_wall_ms=1e3 * wall, gpu_busy_ms=gpu, top_kernels=top)
    finally:
        dec.close()


def kernel_sweep() -> list[dict]:
    """decode_attention alone on random packed states at 32K: ms per call vs n_splits (where the time goes)."""
    from triton.testing import do_bench

    from fcboost.kernels.decode_attention import _sm_count, decode_attention, split_count
    from fcboost.kernels.state import random_state

    out = []
    for kind in ("kivi", "static"):
        cfg = qconfig(kind)
        if kind == "static":
            cfg = cfg.replace(n_boost=16)  # random_state boosts cfg.n_boost channels
        for B in (1, 64):
            st = random_state(cfg, [32768] * B, 8, 128, torch.bfloat16, "cuda", pending=True)
            q = torch.randn(B, 32, 128, device="cuda", dtype=torch.bfloat16)
            kn = torch.randn(B, 8, 128, device="cuda", dtype=torch.bfloat16)
            mt = int((torch.minimum(st.n_pages * cfg.page_size, st.n_vq) // 64).max())
            default = split_count(B, 8, mt * 64 // 128, _sm_count(q.device))
            nbytes = st.nbytes_read()
            for ns in sorted({default, 1, 4, 16, 64, 128}):

                def call(q=q, st=st, kn=kn, ns=ns, mt=mt):
                    return decode_attention(q, st, 0.088, kn, kn, n_splits=ns, max_tiles=mt)

                ms = do_bench(call, rep=50)
                out.append(
                    dict(
                        kind=kind,
                        B=B,
                        L=32768,
                        n_splits=ns,
                        default=ns == default,
                        ms=ms,
                        gb_per_s=nbytes / ms / 1e6,
                    )
                )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--contexts", type=int, nargs="+", default=[32768, 16384, 4096])
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--dynamic-steps", type=int, default=24)
    ap.add_argument("--hf-static-steps", type=int, default=64, help="extra steps timed for hf_static")
    ap.add_argument(
        "--hf-static-contexts",
        type=int,
        nargs="*",
        help="contexts for hf_static (default: all; it compiles per shape)",
    )
    ap.add_argument("--equal-batch", type=int, default=8)
    ap.add_argument("--sweep", type=int, nargs="*", default=[16, 32, 64, 128])
    ap.add_argument("--budget-gib", type=float, default=120.0)
    ap.add_argument("--prefill-chunk", type=int, default=32768)
    ap.add_argument("--time-budget", type=float, default=1e9, help="start no new run after this many seconds")
    ap.add_argument(
        "--caches", nargs="+", default=["static_bf16", "dynamic", "kivi", "kitty", "static", "hf_static"]
    )
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--big-steps", type=int, default=24, help="steps for batches above --big-batch rows")
    ap.add_argument("--big-batch", type=int, default=64)
    ap.add_argument("--prev", help="JSON of an earlier run: its successful runs are kept and not repeated")
    ap.add_argument("--kernel-sweep", action="store_true", help="time decode_attention alone vs n_splits")
    args = ap.parse_args()
    t_start = time.time()
    commit = (
        os.environ.get("FCBOOST_COMMIT")
        or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    )  # a device copy of the tree may carry a stale .git: pass the commit in
    res = dict(
        command=" ".join([sys.executable.split("/")[-1]] + sys.argv),
        git_commit=commit,
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        transformers=__import__("transformers").__version__,
        triton=__import__("triton").__version__,
        budget_gib=args.budget_gib,
        steps=args.steps,
        runs=[],
        errors=[],
    )

    def save():
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_json(args.out, res)

    t = time.time()
    model = random_model("qwen3-8b", dtype=torch.bfloat16, device="cuda").model
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    res.update(model_init_s=time.time() - t, weights_gib=weights / GiB)
    mask = ChannelMask.random(model.config, n_pairs=8, seed=42)
    done = set()
    if args.prev:
        prev = json.load(open(args.prev))
        for r in prev["runs"]:
            r.setdefault("source", prev.get("git_commit", "prev"))
            res["runs"].append(r)
            done.add((r["L"], r["kind"], r["B"]))
        res["prev_command"], res["prev_commit"] = prev.get("command"), prev.get("git_commit")
        res["profiles"] = prev.get("profiles", [])
    if args.kernel_sweep:
        try:
            res["kernel_sweep"] = kernel_sweep()
        except Exception as e:
            res["errors"].append(dict(error=f"kernel sweep: {type(e).__name__}: {e}"))
        save()
    budget = args.budget_gib * GiB
    plan = []
    for L in args.contexts:
        tok = L + args.steps + 1
        mx = {k: max_batch(model.config, k, tok, weights, budget) for k in args.caches}
        res.setdefault("max_batch", {})[str(L)] = mx
        res.setdefault("bytes_per_row", {})[str(L)] = {
            k: row_bytes(model.config, k, tok) for k in args.caches
        }
        batches = {k: [1, args.equal_batch, mx[k]] for k in args.caches}
        if L == max(args.contexts):
            for k in args.caches:
                batches[k] += [b for b in args.sweep if b < mx[k]]
        if (
            "hf_static" in batches
        ):  # equal batches only: generate prefills every row in one forward (no chunking); at bf16's
            # largest batch, 23 x 32K, that is estimated beyond the GPU (15 GiB weights + 104 GiB cache
            # + 17 GiB for one MLP activation of 754K tokens), not run
            keep = args.hf_static_contexts is None or L in args.hf_static_contexts
            batches["hf_static"] = [1, args.equal_batch] if keep else []
        for k in args.caches:
            for B in sorted(set(batches[k])):
                if (L, k, B) not in done:
                    plan.append((L, k, B))
    # targets first: the largest context at batch 1 and at the largest batch, then the rest; the
    # compiled HF baseline last
    Lm = max(args.contexts)

    def prio(p):
        L, k, B = p
        mb = res["max_batch"][str(L)][k]
        return (k == "hf_static", L != Lm, B not in (1, mb), -L, B, k)  # hf_static (compiles) last

    plan.sort(key=prio)
    res["plan"] = [list(p) for p in plan]
    save()
    for L, kind, B in plan:
        if time.time() - t_start > args.time_budget:
            res["errors"].append(dict(L=L, kind=kind, B=B, error="skipped: time budget"))
            continue
        _free()
        rec = dict(
            L=L,
            kind=kind,
            B=B,
            max_batch=res["max_batch"][str(L)][kind],
            weights_plus_cache_gib=(weights + B * row_bytes(model.config, kind, L + args.steps + 1)) / GiB,
        )
        t = time.time()
        try:
            if kind == "dynamic":
                steps = min(args.steps, args.dynamic_steps)
                rec.update(run_dynamic(model, L, B, steps), steps=steps)
            elif kind == "hf_static":
                steps = min(args.steps, args.hf_static_steps)
                rec.update(run_hf_static(model, L, B, steps), steps=steps)
            else:
                steps = args.steps if B <= args.big_batch else min(args.steps, args.big_steps)
                rec.update(run_ours(model, kind, L, B, steps, mask, args.prefill_chunk), steps=steps)
            rec["tokens_per_s"] = 1e3 * B / rec["ms_per_step"]
            rec["peak_gib"] = torch.cuda.max_memory_allocated() / GiB
            rec["wall_s"] = time.time() - t
            res["runs"].append(rec)
            print(json.dumps(rec), flush=True)
        except Exception as e:
            oom = isinstance(e, torch.OutOfMemoryError)
            res["errors"].append(
                dict(L=L, kind=kind, B=B, error=f"{type(e).__name__}: {str(e)[:300]}", oom=oom)
            )
            print(f"FAILED {L} {kind} {B}: {e}", flush=True)
            if not oom:
                traceback.print_exc()
        save()
    if args.profile and time.time() - t_start < args.time_budget + 60:
        for kind in ("static",):
            try:
                _free()
                res.setdefault("profiles", []).append(profile_step(model, kind, Lm, mask, args.prefill_chunk))
            except Exception as e:
                res["errors"].append(dict(kind=kind, error=f"profile: {type(e).__name__}: {e}"))
            save()
    res["total_s"] = time.time() - t_start
    save()
    print(f"done in {round(res['total_s'])} s: {len(res['runs'])} runs, {len(res['errors'])} errors")


if __name__ == "__main__":
    main()
