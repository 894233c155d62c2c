"""Tokens/s vs batch per cache at one context, from the decode benchmark JSON (CPU, matplotlib).

python scripts/plot_throughput.py benchmarks/results/decode_h200.json experiments/throughput_32k.png --context 32768
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {
    "dynamic": "bf16 DynamicCache (HF eager)",
    "static_bf16": "bf16 static cache (graph)",
    "kivi": "ours KIVI-KV2* (2-bit)",
    "kitty": "ours Kitty (2-bit + 16 ch)",
    "static": "ours static mask (2-bit + 16 ch, values)",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json")
    ap.add_argument("png")
    ap.add_argument("--context", type=int, default=32768)
    a = ap.parse_args()
    res = json.load(open(a.json))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, label in LABELS.items():
        pts = sorted(
            (r["B"], r["tokens_per_s"]) for r in res["runs"] if r["kind"] == kind and r["L"] == a.context
        )
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
            mb = res.get("max_batch", {}).get(str(a.context), {}).get(kind)
            if mb:
                ax.axvline(mb, ls=":", lw=0.8, color=ax.lines[-1].get_color())
    ax.set_xscale("log", base=2)
    ax.set_xlabel(
        f"batch (rows of {a.context // 1024}K context); dotted: largest batch in "
        f"{res.get('budget_gib', 120):g} GiB"
    )
    ax.set_ylabel("decode tokens/s")
    ax.set_title(f"Qwen3-8B shape, bf16 weights, {res.get('device', '')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(a.png, dpi=120)


if __name__ == "__main__":
    main()
