"""Contextual Agreement (CA) of RoPE frequency pairs (FASA Eq. 4, REFERENCE.md section 2).

For query position ``t``, query head ``h`` and pair ``i``::

    CA = |TopK(q_t . K_{<t}) & TopK(q_t[i] . K_{<t}[i])| / K

on raw logits (no softmax, no scale). Query head ``h`` reads KV head ``h // n_rep``. Scores are
averaged over ``n_positions`` query positions evenly spaced in ``[K+1, T)``, then over sequences,
then over the query heads of each KV head. Pair 0 is the highest frequency.

Vectorized over heads and pairs; positions are processed in chunks whose keys are padded to the
chunk's largest ``t`` and masked with ``-inf`` (``t >= K+1`` so a masked key is never in a top-K).
"""

from __future__ import annotations

import torch

from fcboost.masks.mask import pairs_view
from fcboost.masks.scores import PairScoreObserver


def query_positions(seq_len: int, n_positions: int, top_k: int) -> torch.Tensor:
    """LongTensor ``(n,)``: ``n = min(n_positions, T-K-1)`` distinct positions evenly spaced in ``[K+1, T)``."""
    lo, hi = top_k + 1, seq_len - 1
    if hi < lo:
        raise ValueError(f"seq_len={seq_len} is too short for top_k={top_k}: need seq_len >= top_k + 2")
    n = min(n_positions, hi - lo + 1)
    if n < 1:
        raise ValueError(f"n_positions={n_positions} must be >= 1")
    return torch.linspace(lo, hi, n, dtype=torch.float64).round().long().unique()


def ca_pair_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    top_k: int,
    pair_layout: str = "rotate_half",
    max_elements: int = 1 << 26,
) -> torch.Tensor:
    """Mean CA per (query head, pair) of one sequence: float32 ``(Hq, d/2)``.

    ``q``: ``(Hq, T, D)``, ``k``: ``(Hkv, T, D)`` post-RoPE (any float dtype; computed in float32).
    ``positions``: LongTensor ``(n,)`` of query positions, each in ``[K+1, T)``.
    ``max_elements`` bounds the ``(C, Hq, d/2, t)`` pair-logit block of one position chunk.
    """
    n_heads, seq_len, d = q.shape
    n_kv = k.shape[0]
    if k.shape[1:] != (seq_len, d) or n_heads % n_kv:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} do not fit (Hq, T, D) / (Hkv, T, D)")
    if d % 2:
        raise ValueError(f"head_dim={d} must be even")
    positions = positions.to(torch.long)
    if positions.numel() == 0 or int(positions.min()) < top_k + 1 or int(positions.max()) >= seq_len:
        raise ValueError(
            f"positions must lie in [K+1={top_k + 1}, T={seq_len}); got {positions.tolist()[:8]}..."
        )
    n_rep, n_pairs = n_heads // n_kv, d // 2
    q = q.float()
    k = k.float()
    qp = pairs_view(q, pair_layout)  # (Hq, T, P, 2)
    kp = pairs_view(k, pair_layout).permute(0, 2, 1, 3)  # (Hkv, P, T, 2)
    kp = kp.repeat_interleave(n_rep, dim=0)  # (Hq, P, T, 2)
    k_rep = k.repeat_interleave(n_rep, dim=0)  # (Hq, T, D)
    total = torch.zeros(n_heads, n_pairs, dtype=torch.float32, device=q.device)
    positions = positions.sort().values.to(q.device)
    c = max(1, max_elements // (n_heads * n_pairs * int(positions[-1])))  # positions per chunk
    start = 0
    while start < positions.numel():
        pos = positions[start : start + c]  # (C,)
        t_max = int(pos[-1])  # keys [0, t_max) cover every t in the chunk
        valid = torch.arange(t_max, device=q.device)[None] < pos[:, None]  # (C, t_max)
        neg = torch.zeros(valid.shape, device=q.device).masked_fill_(~valid, float("-inf"))  # (C, t_max)
        q_t = q[:, pos]  # (Hq, C, D)
        full = torch.einsum("hcd,htd->cht", q_t, k_rep[:, :t_max]) + neg[:, None]  # (C, Hq, t_max)
        in_full = torch.zeros_like(full, dtype=torch.bool)
        in_full.scatter_(-1, full.topk(top_k, dim=-1, sorted=False).indices, True)  # (C, Hq, t_max)
        qp_t = qp[:, pos].permute(1, 0, 2, 3)  # (C, Hq, P, 2)
        kpt = kp[:, :, :t_max]  # (Hq, P, t_max, 2)
        part = (
            qp_t[..., 0, None] * kpt[None, ..., 0] + qp_t[..., 1, None] * kpt[None, ..., 1]
        )  # (C, Hq, P, t_max)
        part += neg[:, None, None]
        top_part = part.topk(top_k, dim=-1, sorted=False).indices  # (C, Hq, P, K)
        del part
        hits = in_full[:, :, None].expand(-1, -1, n_pairs, -1).gather(-1, top_part)  # (C, Hq, P, K)
        total += hits.sum(-1).sum(0).float() / top_k
        start += pos.numel()
    return total / positions.numel()


def ca_pair_scores_reference(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, top_k: int, pair_layout: str = "rotate_half"
) -> torch.Tensor:
    """Slow per-position, per-head, per-pair loop of the same definition: ``(Hq, d/2)`` (tests)."""
    n_heads, _, d = q.shape
    n_rep = n_heads // k.shape[0]
    half = d // 2
    out = torch.zeros(n_heads, half)
    for h in range(n_heads):
        kh = k[h // n_rep].float()
        for t in positions.tolist():
            qt = q[h, t].float()
            full_top = set((kh[:t] @ qt).topk(top_k).indices.tolist())
            for i in range(half):
                a, b = (i, i + half) if pair_layout == "rotate_half" else (2 * i, 2 * i + 1)
                part = qt[a] * kh[:t, a] + qt[b] * kh[:t, b]
                out[h, i] += len(full_top & set(part.topk(top_k).indices.tolist())) / top_k
    return out / len(positions)


class CAObserver(PairScoreObserver):
    """Accumulates CA per (layer, query head, pair) over sequences.

    ``finalize()`` returns ``(L, Hkv, d/2)`` (query heads of a KV head averaged); the query-head
    scores ``(L, Hq, d/2)`` are in ``self.query_scores`` afterwards.
    """

    def __init__(
        self,
        n_layers: int,
        n_kv_heads: int,
        pair_layout: str = "rotate_half",
        top_k: int = 256,
        n_positions: int = 512,
        max_elements: int = 1 << 26,
    ):
        super().__init__(n_layers, n_kv_heads, pair_layout)
        self.top_k, self.n_positions, self.max_elements = top_k, n_positions, max_elements
        self.positions_used: list[int] = []
        self.query_scores: torch.Tensor | None = None

    def update(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor) -> None:
        """``q`` ``(B, Hq, T, D)``, ``k`` ``(B, Hkv, T, D)``: one CA average per batch row."""
        positions = query_positions(q.shape[2], self.n_positions, self.top_k)
        if layer_idx == 0:
            self.positions_used.append(positions.numel())
        for b in range(q.shape[0]):
            s = ca_pair_scores(q[b], k[b], positions, self.top_k, self.pair_layout, self.max_elements)
            self._add(layer_idx, s.cpu(), 1)

    def finalize(self) -> torch.Tensor:
        self.query_scores = self._mean()  # (L, Hq, P)
        return self._group_heads(self.query_scores)
