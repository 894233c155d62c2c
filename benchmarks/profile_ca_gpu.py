"""Time and memory of CA profiling at the paper's scale: random-weight Qwen3-8B (bf16, CUDA),
16 x 8192 random token ids, 512 positions, K=256, F=8.

    python benchmarks/profile_ca_gpu.py --out benchmarks/results/profile_ca_h200.json
    python benchmarks/profile_ca_gpu.py --model tiny-qwen3 --device cpu --dtype float32 \
        --n-seq 2 --seq-len 600 --out /tmp/profile_ca_cpu.json          # CPU smoke run

Imports only torch, transformers and the fcboost core (no hydra/omegaconf/wandb/gguf/datasets).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from fcboost.experiment.results import write_json
from fcboost.masks.profile import profile_ca, versions
from fcboost.models import random_model


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen3-8b", help="a name in fcboost.models.RANDOM_CONFIGS")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--n-seq", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--n-positions", type=int, default=512)
    p.add_argument("--top-k", type=int, default=256)
    p.add_argument("--n-pairs", type=int, default=8)
    p.add_argument("--layout", default="rotate_half", choices=("rotate_half", "adjacent"))
    p.add_argument(
        "--max-elements",
        type=int,
        default=1 << 28,
        help="bound on the (positions, heads, pairs, keys) block of one CA chunk",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSON file to write")
    args = p.parse_args(argv)

    dtype = getattr(torch, args.dtype)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is visible; use --device cpu with a tiny model")
    t0 = time.perf_counter()
    loaded = random_model(args.model, dtype=dtype, device=args.device, seed=args.seed)
    load_s = time.perf_counter() - t0
    vocab = loaded.model.config.vocab_size
    gen = torch.Generator().manual_seed(args.seed)
    chunks = [torch.randint(0, vocab, (args.seq_len,), generator=gen) for _ in range(args.n_seq)]
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    mask = profile_ca(
        loaded.model,
        None,
        chunks,
        n_pairs=args.n_pairs,
        pair_layout=args.layout,
        n_sequences=args.n_seq,
        seq_len=args.seq_len,
        n_positions=args.n_positions,
        top_k=args.top_k,
        min_tokens=1,
        fingerprint=loaded.fingerprint,
        max_elements=args.max_elements,
    )
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    result = {
        "benchmark": "profile_ca",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "git_commit": git_commit(),
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        "model": args.model,
        "dtype": args.dtype,
        "n_sequences": args.n_seq,
        "seq_len": args.seq_len,
        "n_positions": args.n_positions,
        "top_k": args.top_k,
        "n_pairs": args.n_pairs,
        "pair_layout": args.layout,
        "max_elements": args.max_elements,
        "model_init_seconds": round(load_s, 3),
        "profile_seconds": round(wall, 3),
        "seconds_per_sequence": round(wall / args.n_seq, 3),
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "mask_id": mask.id,
        "mean_ca": float(mask.scores["ca_kv"].mean()),
        "versions": versions(),
        "cpu_threads": torch.get_num_threads(),
        "pid_cpus": os.cpu_count(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result, indent=2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
