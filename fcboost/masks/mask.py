"""`ChannelMask`: a static per-(layer, KV head) set of boosted channels, saved with provenance.

A RoPE frequency pair ``i`` (0 = highest frequency) covers two channels of head_dim ``d``:

| pair_layout   | channels of pair i | who uses it                                         |
|---------------|--------------------|-----------------------------------------------------|
| ``rotate_half`` | (i, i + d/2)     | HF Llama/Qwen/Mistral (``cat(freqs, freqs)``): RoPE-correct |
| ``adjacent``    | (2i, 2i + 1)     | the FCBoost/FASA authors' code (mixes two frequencies on HF models) |
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PAIR_LAYOUTS = ("rotate_half", "adjacent")
FORMAT_VERSION = 1


def _check_layout(pair_layout: str) -> None:
    if pair_layout not in PAIR_LAYOUTS:
        raise ValueError(f"pair_layout={pair_layout!r} is unknown; expected one of {PAIR_LAYOUTS}")


def pair_channels(pairs: torch.Tensor, head_dim: int, pair_layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The two channel indices of each RoPE pair index in ``pairs`` (any shape)."""
    _check_layout(pair_layout)
    if pair_layout == "rotate_half":
        return pairs, pairs + head_dim // 2
    return 2 * pairs, 2 * pairs + 1


def pairs_view(x: torch.Tensor, pair_layout: str) -> torch.Tensor:
    """View ``(..., d)`` as ``(..., d/2, 2)``: the two channels of every pair on the last axis."""
    _check_layout(pair_layout)
    d = x.shape[-1]
    if pair_layout == "rotate_half":
        return x.unflatten(-1, (2, d // 2)).transpose(-1, -2)
    return x.unflatten(-1, (d // 2, 2))


def mask_from_pair_scores(scores: torch.Tensor, n_pairs: int, pair_layout: str) -> torch.Tensor:
    """bool ``(L, H, d)`` with the top-``n_pairs`` pairs of ``scores`` ``(L, H, d/2)`` set."""
    n_total = scores.shape[-1]
    if not 0 < n_pairs <= n_total:
        raise ValueError(f"n_pairs={n_pairs} must be in [1, head_dim/2={n_total}]")
    top = scores.float().topk(n_pairs, dim=-1).indices  # (L, H, F)
    a, b = pair_channels(top, 2 * n_total, pair_layout)
    mask = torch.zeros(*scores.shape[:-1], 2 * n_total, dtype=torch.bool)
    return mask.scatter_(-1, a, True).scatter_(-1, b, True)


@dataclass
class ChannelMask:
    """bool ``mask`` ``(layers, kv_heads, head_dim)``: channels stored at ``boost_bits``.

    ``scores`` holds named float tensors (e.g. ``"ca_q"`` ``(L, Hq, d/2)``, ``"ca_kv"``
    ``(L, Hkv, d/2)``); ``meta`` is JSON-able provenance (method, model fingerprint, calibration
    spec and hash, K, positions, versions).
    """

    mask: torch.Tensor
    pair_layout: str = "rotate_half"
    n_pairs: int = 0
    meta: dict = field(default_factory=dict)
    scores: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_layout(self.pair_layout)
        if self.mask.dtype != torch.bool or self.mask.ndim != 3:
            raise ValueError(
                f"mask must be bool (layers, kv_heads, head_dim); got {self.mask.dtype} {tuple(self.mask.shape)}"
            )
        counts = self.mask.sum(-1)
        if not bool((counts == counts.flatten()[0]).all()):
            raise ValueError(
                f"every (layer, KV head) must boost the same number of channels; got counts {counts.unique().tolist()}"
            )
        if self.n_pairs and int(counts.flatten()[0]) != 2 * self.n_pairs:
            raise ValueError(
                f"n_pairs={self.n_pairs} but the mask sets {int(counts.flatten()[0])} channels per head"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.mask.shape)

    @property
    def n_channels(self) -> int:
        return int(self.mask[0, 0].sum())

    @property
    def id(self) -> str:
        """Short content hash (mask bits + layout): the key results are stored under."""
        h = hashlib.sha256(self.mask.to(torch.uint8).numpy().tobytes())
        h.update(f"{self.pair_layout}:{self.shape}".encode())
        return f"{self.meta.get('method', 'mask')}-{h.hexdigest()[:12]}"

    def layer(self, layer_idx: int) -> torch.Tensor:
        return self.mask[layer_idx]

    def check_compatible(self, n_layers: int, n_kv_heads: int, head_dim: int) -> None:
        """Raise if the mask was made for another attention shape."""
        want = (n_layers, n_kv_heads, head_dim)
        if self.shape != want:
            raise ValueError(
                f"ChannelMask of shape (layers, kv_heads, head_dim)={self.shape} does not fit a model "
                f"with {want}; profile a mask for this model (fingerprint in the mask: "
                f"{self.meta.get('model', {}).get('name', 'unknown')})"
            )

    # constructors ------------------------------------------------------------------------
    @classmethod
    def from_pair_scores(cls, scores: torch.Tensor, n_pairs: int, pair_layout: str, **kw) -> ChannelMask:
        return cls(mask_from_pair_scores(scores, n_pairs, pair_layout), pair_layout, n_pairs, **kw)

    @classmethod
    def random(cls, model_config, n_pairs: int, seed: int, pair_layout: str = "rotate_half") -> ChannelMask:
        """``n_pairs`` uniformly random RoPE pairs per (layer, KV head), reproducible by ``seed``."""
        from fcboost.models import attention_shape

        shape = attention_shape(model_config)
        gen = torch.Generator().manual_seed(seed)
        scores = torch.rand(shape.n_layers, shape.n_kv_heads, shape.head_dim // 2, generator=gen)
        meta = {"method": "random", "seed": seed, "model": {"shape": shape.as_dict()}}
        return cls.from_pair_scores(scores, n_pairs, pair_layout, meta=meta)

    # artifacts ---------------------------------------------------------------------------
    @staticmethod
    def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
        p = Path(path)
        stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
        return stem.with_suffix(".safetensors"), stem.with_suffix(".json")

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``<stem>.safetensors`` (mask + scores) and ``<stem>.json`` (metadata) atomically."""
        st, js = self._paths(path)
        st.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"mask": self.mask.to(torch.uint8).contiguous()}
        tensors.update({f"scores.{k}": v.float().contiguous() for k, v in self.scores.items()})
        meta = {
            "format_version": FORMAT_VERSION,
            "pair_layout": self.pair_layout,
            "n_pairs": self.n_pairs,
            "shape": list(self.shape),
            "id": self.id,
            **self.meta,
        }
        for target, write in (
            (st, lambda t: save_file(tensors, str(t))),
            (js, lambda t: t.write_text(json.dumps(meta, indent=2, default=str))),
        ):
            tmp = target.with_name(target.name + ".tmp")
            write(tmp)
            os.replace(tmp, target)
        return st

    @classmethod
    def load(cls, path: str | os.PathLike) -> ChannelMask:
        st, js = cls._paths(path)
        if not st.exists():
            raise FileNotFoundError(f"no mask file at {st}")
        tensors = load_file(str(st))
        meta = json.loads(js.read_text()) if js.exists() else {}
        pair_layout = meta.pop("pair_layout", "rotate_half")
        n_pairs = meta.pop("n_pairs", 0)
        for k in ("format_version", "shape", "id"):
            meta.pop(k, None)
        scores = {k.removeprefix("scores."): v for k, v in tensors.items() if k.startswith("scores.")}
        return cls(tensors["mask"].bool(), pair_layout, n_pairs, meta=meta, scores=scores)
