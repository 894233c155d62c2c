"""Channel selectors: which key/value channels of a page get ``boost_bits``.

A selector is a strategy object chosen by the config's ``selector`` field; adding one is a new
class registered in ``SELECTOR_TYPES``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NoBoost:
    """KIVI-KV2*: every channel at the base bit-width."""

    n_boost: int = 0

    def key_boost(self, pages: torch.Tensor) -> torch.Tensor | None:
        return None

    def value_boost(self) -> torch.Tensor | None:
        return None


@dataclass(frozen=True)
class DynamicMagnitude:
    """Kitty: per (batch row, KV head, page), the top-``n_boost`` channels by mean |k| over the page."""

    n_boost: int

    def key_boost(self, pages: torch.Tensor) -> torch.Tensor:
        """``pages`` ``(H, n_pages, P, D)`` -> bool ``(H, n_pages, D)`` with ``n_boost`` channels set;
        ties go to the lower channel (a stable sort; ``topk`` leaves them unspecified), as in the
        Triton pack kernel."""
        score = pages.float().abs().mean(dim=-2)  # (H, n_pages, D)
        top = score.sort(dim=-1, descending=True, stable=True).indices[..., : self.n_boost]
        return torch.zeros_like(score, dtype=torch.bool).scatter_(-1, top, True)

    def value_boost(self) -> torch.Tensor | None:
        return None


@dataclass(frozen=True)
class StaticMask:
    """A fixed per-(layer, KV head) channel set: bool ``mask`` ``(kv_heads, D)`` for one layer."""

    mask: torch.Tensor
    boost_values: bool = False

    @property
    def n_boost(self) -> int:
        return int(self.mask[0].sum())

    def key_boost(self, pages: torch.Tensor) -> torch.Tensor:
        """``pages`` ``(H, n_pages, P, D)`` -> bool ``(H, 1, D)`` (the same for every page)."""
        return self.mask.to(pages.device).unsqueeze(1)

    def value_boost(self) -> torch.Tensor | None:
        """bool ``(H, D)`` for values ``(H, N, D)``, or None without ``boost_values``."""
        return self.mask if self.boost_values else None
