"""Static per-pair scores from calibration q/k: one observer per method, one code path.

An observer is fed ``update(layer_idx, q (B, Hq, T, D), k (B, Hkv, T, D))`` by
:func:`fcboost.masks.capture.run_capture` and ``finalize()`` returns pair scores ``(L, Hkv, d/2)``
(higher = more worth boosting). Only the statistic differs between methods:

| method      | pair score                                                         |
|-------------|--------------------------------------------------------------------|
| ``ca``      | Contextual Agreement (``fcboost.masks.ca.CAObserver``)             |
| ``magnitude`` | mean ``|k|`` over tokens, averaged over the pair's two channels   |
| ``energy``  | ``1/2 (E||q_i||^2 + E||k_i||^2)``, q averaged over the KV head's query heads |
| ``random``  | no data: ``ChannelMask.random``                                     |
"""

from __future__ import annotations

import torch

from fcboost.masks.mask import pairs_view


class PairScoreObserver:
    """Per-layer running sums; subclasses define ``update`` and ``finalize``."""

    def __init__(self, n_layers: int, n_kv_heads: int, pair_layout: str = "rotate_half"):
        self.n_layers, self.n_kv_heads, self.pair_layout = n_layers, n_kv_heads, pair_layout
        self._sums: dict[str, list[torch.Tensor | None]] = {}
        self._counts: dict[str, list[float]] = {}

    def _add(self, layer_idx: int, value: torch.Tensor, count: float, name: str = "main") -> None:
        """Add ``value`` (summed over ``count`` samples) to the running sum of ``name`` at ``layer_idx``."""
        if not 0 <= layer_idx < self.n_layers:
            raise ValueError(f"layer_idx={layer_idx} out of range [0, {self.n_layers})")
        sums = self._sums.setdefault(name, [None] * self.n_layers)
        counts = self._counts.setdefault(name, [0.0] * self.n_layers)
        value = value.detach().double().cpu()
        sums[layer_idx] = value if sums[layer_idx] is None else sums[layer_idx] + value
        counts[layer_idx] += count

    def _mean(self, name: str = "main") -> torch.Tensor:
        """float32 ``(L, ...)``: running sum / count per layer."""
        sums = self._sums.get(name)
        if sums is None or any(s is None for s in sums):
            missing = [i for i, s in enumerate(sums or [None] * self.n_layers) if s is None]
            raise RuntimeError(f"no q/k observed for layers {missing}; run the calibration prefill first")
        return torch.stack([s / c for s, c in zip(sums, self._counts[name])]).float()

    def _group_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(L, Hq, ...)`` -> ``(L, Hkv, ...)``: mean over the query heads sharing a KV head."""
        n_rep = x.shape[1] // self.n_kv_heads
        return x.unflatten(1, (self.n_kv_heads, n_rep)).mean(2)  # (L, Hkv, n_rep, ...) -> (L, Hkv, ...)

    def update(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor) -> None:
        raise NotImplementedError

    def finalize(self) -> torch.Tensor:
        raise NotImplementedError


class MagnitudeObserver(PairScoreObserver):
    """Mean ``|k|`` per channel over every calibration token; pair score = mean of its two channels."""

    def update(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor) -> None:
        b, _, t, _ = k.shape
        self._add(layer_idx, k.float().abs().sum(dim=(0, 2)), b * t)  # (Hkv, D)

    def channel_means(self) -> torch.Tensor:
        """``(L, Hkv, D)``: mean ``|k|`` per channel."""
        return self._mean()

    def finalize(self) -> torch.Tensor:
        return pairs_view(self.channel_means(), self.pair_layout).mean(-1)  # (L, Hkv, P)


class EnergyObserver(PairScoreObserver):
    """Per-pair ``1/2 (E||q_i||^2 + E||k_i||^2)``; the query term is averaged over the KV head's query heads."""

    def update(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor) -> None:
        b, _, t, _ = k.shape
        q2 = pairs_view(q.float(), self.pair_layout).square().sum(-1).sum(dim=(0, 2))  # (Hq, P)
        k2 = pairs_view(k.float(), self.pair_layout).square().sum(-1).sum(dim=(0, 2))  # (Hkv, P)
        self._add(layer_idx, q2, b * t, "q")
        self._add(layer_idx, k2, b * t, "k")

    def finalize(self) -> torch.Tensor:
        return 0.5 * (self._group_heads(self._mean("q")) + self._mean("k"))  # (L, Hkv, P)


def make_observer(
    method: str, n_layers: int, n_kv_heads: int, pair_layout: str, **ca_kw
) -> PairScoreObserver:
    """The observer of ``method`` ("ca", "magnitude", "energy")."""
    if method == "ca":
        from fcboost.masks.ca import CAObserver

        return CAObserver(n_layers, n_kv_heads, pair_layout, **ca_kw)
    if method == "magnitude":
        return MagnitudeObserver(n_layers, n_kv_heads, pair_layout)
    if method == "energy":
        return EnergyObserver(n_layers, n_kv_heads, pair_layout)
    raise ValueError(f"method={method!r} has no observer; expected 'ca', 'magnitude' or 'energy'")
