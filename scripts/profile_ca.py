"""Build (or fetch from the mask cache) a static channel mask and draw its pictures.

    FCBOOST_DATA=/work/shared/data python scripts/profile_ca.py --model smollm2-135m --method ca \
        --n-pairs 4 --layout rotate_half --n-seq 4 --seq-len 2048 --n-positions 256 --top-k 64 \
        --out experiments/masks_smollm2
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from fcboost.masks.plots import save_pictures
from fcboost.masks.profile import METHODS, MaskSpec, get_or_build_mask
from fcboost.models import load


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", default="smollm2-135m", help="embedded name, hub id, directory, .gguf or random:<name>"
    )
    p.add_argument("--method", default="ca", choices=METHODS)
    p.add_argument("--n-pairs", type=int, default=8, help="F: RoPE pairs boosted per (layer, KV head)")
    p.add_argument("--layout", default="rotate_half", choices=("rotate_half", "adjacent"))
    p.add_argument("--data", default="wikitext-2/valid.txt", help="data name under $FCBOOST_DATA, or a path")
    p.add_argument("--n-seq", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--min-tokens", type=int, default=512)
    p.add_argument("--n-positions", type=int, default=512)
    p.add_argument("--top-k", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="masks", help="mask directory (the cache)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    loaded = load(args.model, dtype=args.dtype, device=args.device)
    spec = MaskSpec(
        args.method,
        args.n_pairs,
        args.layout,
        args.data,
        args.n_seq,
        args.seq_len,
        args.min_tokens,
        args.n_positions,
        args.top_k,
        args.seed,
    )
    t0 = time.perf_counter()
    mask = get_or_build_mask(args.out, loaded, spec)
    wall = time.perf_counter() - t0
    artifact = Path(args.out) / f"{mask.meta['cache_key']}.safetensors"
    pictures = save_pictures(mask, artifact) if mask.scores else []
    print(
        f"mask {mask.id} ({spec.method}, {spec.pair_layout}, F={spec.n_pairs}) in {wall:.1f} s -> {artifact}"
    )
    for pic in pictures:
        print(f"picture: {pic}")


if __name__ == "__main__":
    main()
