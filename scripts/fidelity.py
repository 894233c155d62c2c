"""Teacher-forced fidelity of several cache methods on text chunks, as a markdown table.

python scripts/fidelity.py --data $FCBOOST_DATA/wikitext-2/valid.txt --n-chunks 4 --chunk-len 1024
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from fcboost import ChannelMask, KVQuantConfig
from fcboost.eval.fidelity import fidelity, fp16_logprobs
from fcboost.models import attention_shape, load


def text_chunks(tokenizer, path: Path, n_chunks: int, chunk_len: int) -> list[torch.Tensor]:
    """``n_chunks`` consecutive ``chunk_len``-token windows of the file (from its start)."""
    ids = tokenizer(path.read_text(), return_tensors="pt").input_ids[0]
    if ids.numel() < n_chunks * chunk_len:
        raise ValueError(f"{path} has {ids.numel()} tokens; need n_chunks*chunk_len={n_chunks * chunk_len}")
    return [ids[i * chunk_len : (i + 1) * chunk_len] for i in range(n_chunks)]


def default_methods(
    config, mask_files: list[str], baselines: bool = True, boost_values: tuple[bool, ...] = (True, False)
) -> dict[str, tuple[KVQuantConfig, ChannelMask | None]]:
    """KIVI, Kitty(d/8) and three random masks (F=d/16; seeds 42/123/456), then each mask file."""
    d = attention_shape(config).head_dim
    methods = {}
    if baselines:
        methods["kivi"] = (KVQuantConfig.kivi(), None)
        methods[f"kitty(n_boost={d // 8})"] = (KVQuantConfig.kitty(d // 8), None)
        for seed in (42, 123, 456):
            mask = ChannelMask.random(config, n_pairs=d // 16, seed=seed)
            methods[f"random(F={d // 16}, seed={seed})"] = (KVQuantConfig.static(boost_values=True), mask)
    for f in mask_files:
        mask = ChannelMask.load(f)
        for bv in boost_values:
            methods[f"{Path(f).stem}(bv={int(bv)})"] = (KVQuantConfig.static(boost_values=bv), mask)
    return methods


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument(
        "--data",
        default=os.path.join(os.environ.get("FCBOOST_DATA", "../shared/data"), "wikitext-2", "valid.txt"),
    )
    ap.add_argument("--n-chunks", type=int, default=4)
    ap.add_argument("--chunk-len", type=int, default=1024)
    ap.add_argument("--masks", nargs="*", default=[], help="extra ChannelMask files to evaluate")
    ap.add_argument("--no-baselines", action="store_true", help="only the --masks files")
    ap.add_argument(
        "--boost-values",
        choices=("on", "off", "both"),
        default="both",
        help="boost_values setting(s) for the --masks files",
    )
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    t_start = time.time()
    lm = load(args.model)
    chunks = text_chunks(lm.tokenizer, Path(args.data), args.n_chunks, args.chunk_len)
    ref = [fp16_logprobs(lm.model, c) for c in chunks]
    rows = []
    bv = {"on": (True,), "off": (False,), "both": (True, False)}[args.boost_values]
    methods = default_methods(lm.model.config, args.masks, not args.no_baselines, bv)
    for name, (qcfg, mask) in methods.items():
        t = time.time()
        m = fidelity(lm.model, chunks, qcfg, mask, reference=ref)
        rows.append({"method": name, **m, "seconds": time.time() - t})
    print(f"\n{args.model}, {args.n_chunks} x {args.chunk_len} tokens of {args.data}, positions >= 256\n")
    print("| method | KL(fp16‖q) | top-1 agree | NLL | NLL fp16 |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['kl']:.4f} | {r['top1_agree']:.4f} | {r['nll']:.4f} | {r['nll_fp16']:.4f} |"
        )
    wall = time.time() - t_start
    print(f"\nwall time {wall:.1f} s (model load included)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows, "wall_s": wall}, indent=2))


if __name__ == "__main__":
    main()
