"""Section 4.4 of the paper: how a static mask relates to per-page key magnitude.

On calibration chunks, one capture pass measures

* ``page_jaccard[name]``: per (sequence, layer, KV head, full page of ``page_size`` tokens), the
  Jaccard index between the top-``n_top`` channels by mean ``|k|`` over the page (what Kitty boosts)
  and the static mask's channels (paper, Qwen3-8B: mean 0.299);
* ``spearman[name]``: per (layer, KV head), Spearman's rank correlation between a CA mask's pair
  scores and the per-pair mean ``|k|`` (same pair layout) (paper: mean 0.670);
* ``overlap["a|b"]``: Jaccard of two masks' channel sets per (layer, KV head).

Every figure is reported as ``{"mean", "std", "n"}``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from fcboost.masks.capture import run_capture
from fcboost.masks.mask import ChannelMask, pairs_view
from fcboost.masks.scores import MagnitudeObserver
from fcboost.models import attention_shape

PAPER = {"page_jaccard_mean": 0.299, "spearman_mean": 0.670}


def _stats(x: torch.Tensor) -> dict:
    x = x.double().flatten()
    return {"mean": float(x.mean()), "std": float(x.std()) if x.numel() > 1 else 0.0, "n": int(x.numel())}


def jaccard(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Jaccard index of bool sets on the last axis: ``(..., D), (..., D) -> (...)``."""
    inter = (a & b).sum(-1).double()
    union = (a | b).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def spearman(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation along the last axis (average ranks for ties): ``(..., n) -> (...)``."""

    def ranks(v: torch.Tensor) -> torch.Tensor:
        v = v.double()
        less = (v[..., :, None] > v[..., None, :]).sum(-1).double()  # (..., n): #values below each
        equal = (v[..., :, None] == v[..., None, :]).sum(-1).double()  # (..., n): #ties incl. itself
        return less + (equal + 1) / 2

    rx, ry = ranks(x), ranks(y)
    rx = rx - rx.mean(-1, keepdim=True)
    ry = ry - ry.mean(-1, keepdim=True)
    return (rx * ry).sum(-1) / (rx.square().sum(-1) * ry.square().sum(-1)).sqrt()


def page_top_channels(k: torch.Tensor, page_size: int, n_top: int) -> torch.Tensor:
    """bool ``(B, Hkv, n_pages, D)``: top-``n_top`` channels by mean ``|k|`` over each full page of ``k`` ``(B, Hkv, T, D)``."""
    b, h, t, d = k.shape
    n_pages = t // page_size
    pages = (
        k[:, :, : n_pages * page_size].float().abs().unflatten(2, (n_pages, page_size))
    )  # (B, Hkv, n, P, D)
    top = pages.mean(3).topk(n_top, dim=-1).indices  # (B, Hkv, n, n_top)
    return torch.zeros(b, h, n_pages, d, dtype=torch.bool, device=k.device).scatter_(-1, top, True)


def analysis_4_4(
    model,
    tokenizer,
    chunks: Sequence[torch.Tensor] | Sequence[str],
    masks: dict[str, ChannelMask],
    page_size: int = 128,
    n_top: int = 16,
    progress: bool = True,
) -> dict:
    """The Section 4.4 figures for ``masks`` (name -> ``ChannelMask``) on ``chunks`` (LongTensor ``(T,)`` or texts)."""
    shape = attention_shape(model.config)
    if not masks:
        raise ValueError("masks is empty; pass at least one ChannelMask")
    for m in masks.values():
        m.check_compatible(shape.n_layers, shape.n_kv_heads, shape.head_dim)
    if not 1 <= n_top <= shape.head_dim:
        raise ValueError(f"n_top={n_top} must be in [1, head_dim={shape.head_dim}]")
    if chunks and isinstance(chunks[0], str):
        if tokenizer is None:
            raise ValueError("text chunks need a tokenizer")
        chunks = [torch.tensor(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in chunks]
    if not any(len(c) >= page_size for c in chunks):
        raise ValueError(
            f"no chunk holds a full page of {page_size} tokens (lengths {[len(c) for c in chunks]})"
        )
    magnitude = MagnitudeObserver(shape.n_layers, shape.n_kv_heads)
    page_j: dict[str, list[torch.Tensor]] = {name: [] for name in masks}

    def observe(layer_idx: int, q: torch.Tensor, k: torch.Tensor) -> None:
        magnitude.update(layer_idx, q, k)
        top = page_top_channels(k, page_size, n_top).cpu()  # (B, Hkv, n, D)
        for name, m in masks.items():
            page_j[name].append(jaccard(top, m.mask[layer_idx][None, :, None]).flatten())

    run_capture(model, chunks, observe, progress=progress, desc="analysis 4.4")
    channel_mag = magnitude.channel_means()  # (L, Hkv, D)
    out: dict = {
        "page_size": page_size,
        "n_top": n_top,
        "n_chunks": len(chunks),
        "tokens": [int(len(c)) for c in chunks],
        "paper": PAPER,
        "page_jaccard": {name: _stats(torch.cat(v)) for name, v in page_j.items()},
        "spearman_ca_vs_magnitude": {},
        "mask_overlap": {},
    }
    for name, m in masks.items():
        if "ca_kv" in m.scores:
            pair_mag = pairs_view(channel_mag, m.pair_layout).mean(-1)  # (L, Hkv, d/2)
            out["spearman_ca_vs_magnitude"][name] = _stats(spearman(m.scores["ca_kv"], pair_mag))
    for (na, a), (nb, b) in itertools.combinations(masks.items(), 2):
        out["mask_overlap"][f"{na}|{nb}"] = _stats(jaccard(a.mask, b.mask))
    return out
