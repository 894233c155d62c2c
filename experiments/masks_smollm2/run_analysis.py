"""Section 4.4 analysis of the SmolLM2 masks in this folder (built by scripts/profile_ca.py, see README.md).

FCBOOST_DATA=/work/shared/data python experiments/masks_smollm2/run_analysis.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from fcboost.masks.analysis import analysis_4_4
from fcboost.masks.ca import query_positions
from fcboost.masks.mask import ChannelMask, pairs_view
from fcboost.masks.plots import save_pictures
from fcboost.masks.profile import MaskSpec, chunks_for
from fcboost.models import load

HERE = Path(__file__).resolve().parent
SPEC = dict(n_pairs=4, data="wikitext-2/valid.txt", n_sequences=4, seq_len=2048, n_positions=256, top_k=256)


def find(method: str, layout: str) -> ChannelMask | None:
    for js in sorted(HERE.glob(f"{method}-{layout}-F4-*.json")):
        mask = ChannelMask.load(js)
        save_pictures(mask, js)  # (re)draw the pictures next to the artifact
        return mask
    print(f"no {method}/{layout} mask in {HERE} (run scripts/profile_ca.py); skipped")
    return None


def chosen(mask: ChannelMask) -> list[list[list[int]]]:
    """Chosen pair indices per (layer, KV head)."""
    sel = pairs_view(mask.mask, mask.pair_layout).all(-1)  # (L, Hkv, d/2)
    return [[row.nonzero().flatten().tolist() for row in layer] for layer in sel]


def main(n_top: int) -> None:
    loaded = load("smollm2-135m")
    masks = {
        "ca_rotate_half": find("ca", "rotate_half"),
        "ca_adjacent": find("ca", "adjacent"),
        "magnitude_rotate_half": find("magnitude", "rotate_half"),
        "magnitude_adjacent": find("magnitude", "adjacent"),
        "energy_rotate_half": find("energy", "rotate_half"),
        "random_seed42": ChannelMask.random(loaded.model.config, 4, seed=42),
    }
    masks = {name: m for name, m in masks.items() if m is not None}
    chunks = chunks_for(loaded.tokenizer, MaskSpec("ca", **SPEC))
    t0 = time.perf_counter()
    out = analysis_4_4(loaded.model, loaded.tokenizer, chunks, masks, 128, n_top)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["spec"] = SPEC
    out["chosen_pairs"] = {name: chosen(m) for name, m in masks.items() if not name.startswith("random")}
    ca = masks["ca_rotate_half"].scores["ca_kv"]  # (L, Hkv, 32)
    out["ca_rotate_half_summary"] = {
        "mean_by_pair": [round(float(x), 4) for x in ca.mean(dim=(0, 1))],
        "share_of_cells_below_0.15": float((ca < 0.15).float().mean()),
        "chance_K_over_t": float((SPEC["top_k"] / query_positions(2048, 256, 256).double()).mean()),
        "mean_chosen_pair_index": float(
            torch.tensor(
                [i for layer in out["chosen_pairs"]["ca_rotate_half"] for head in layer for i in head]
            )
            .float()
            .mean()
        ),
    }
    (HERE / f"analysis_ntop{n_top}.json").write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "chosen_pairs"}, indent=2))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8)
