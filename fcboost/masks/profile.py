"""Build static channel masks (CA, magnitude, energy, random) with provenance, and cache them.

``get_or_build_mask(mask_dir, loaded, spec)`` is what a sweep calls: the mask is keyed by a hash of
(model fingerprint, every ``MaskSpec`` field, data file hash) and stored as
``<mask_dir>/<key>.safetensors`` + ``.json``, so a sweep profiles once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fcboost.data import calibration_chunks, data_hash, resolve_data_file
from fcboost.masks.capture import run_capture
from fcboost.masks.mask import PAIR_LAYOUTS, ChannelMask, mask_from_pair_scores
from fcboost.masks.scores import make_observer
from fcboost.models import LoadedModel, attention_shape, check_supported

log = logging.getLogger(__name__)
METHODS = ("ca", "magnitude", "energy", "random")


@dataclass(frozen=True)
class MaskSpec:
    """How to build a static mask. ``data``: a name under ``$FCBOOST_DATA`` / the hub, or a path."""

    method: str = "ca"
    n_pairs: int = 8
    pair_layout: str = "rotate_half"
    data: str = "wikitext-2/valid.txt"
    n_sequences: int = 16
    seq_len: int = 8192
    min_tokens: int = 512
    n_positions: int = 512
    top_k: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is unknown; expected one of {METHODS}")
        if self.pair_layout not in PAIR_LAYOUTS:
            raise ValueError(f"pair_layout={self.pair_layout!r} is unknown; expected one of {PAIR_LAYOUTS}")
        if self.n_pairs < 1:
            raise ValueError(f"n_pairs={self.n_pairs} must be >= 1")

    def key_fields(self) -> dict:
        """The fields that change the mask (a random mask ignores the calibration data)."""
        d = asdict(self)
        if self.method == "random":
            d = {k: d[k] for k in ("method", "n_pairs", "pair_layout", "seed")}
        elif self.method != "ca":
            for k in ("n_positions", "top_k", "seed"):
                d.pop(k)
        return d


def versions() -> dict:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def _check_n_pairs(model, n_pairs: int) -> None:
    shape = attention_shape(model.config)
    if not 1 <= n_pairs <= shape.head_dim // 2:
        raise ValueError(f"n_pairs={n_pairs} must be in [1, head_dim/2={shape.head_dim // 2}] for this model")


def _as_chunks(tokenizer, texts, n_sequences: int, seq_len: int, min_tokens: int) -> list[torch.Tensor]:
    """Token chunks ``(T,)`` from a data name/path, a list of texts, or already-tokenized chunks."""
    if isinstance(texts, (str, os.PathLike)) or (texts and isinstance(texts[0], str)):
        if tokenizer is None:
            raise ValueError(
                "texts need a tokenizer; pass token chunks (list of LongTensor) for a model without one"
            )
        return calibration_chunks(tokenizer, texts, n_sequences, seq_len, min_tokens)
    chunks = [torch.as_tensor(c).flatten()[:seq_len] for c in texts][:n_sequences]
    if len(chunks) < n_sequences:
        raise ValueError(f"got {len(chunks)} token chunks but n_sequences={n_sequences} were requested")
    return chunks


def _ca_kw(model, spec: MaskSpec, max_elements: int | None) -> dict:
    if max_elements is None:
        max_elements = 1 << 28 if next(model.parameters()).device.type == "cuda" else 1 << 26
    return {"top_k": spec.top_k, "n_positions": spec.n_positions, "max_elements": max_elements}


def build_mask(
    model,
    tokenizer,
    texts_or_chunks,
    spec: MaskSpec,
    fingerprint: dict | None = None,
    progress: bool = True,
    max_elements: int | None = None,
) -> ChannelMask:
    """Profile ``model`` on the calibration data and return the top-``spec.n_pairs`` mask of ``spec.method``.

    ``texts_or_chunks``: a data name/path, a list of texts, or a list of LongTensor ``(T,)``.
    The mask holds pair scores (``"<method>_kv"`` ``(L, Hkv, d/2)``; for CA also ``"ca_q"``
    ``(L, Hq, d/2)``) and provenance in ``meta``. ``max_elements`` bounds the CA working block
    (default 2^26 on CPU, 2^28 on CUDA: ~1 GB / ~4 GB float32 peak); it does not change the result.
    """
    check_supported(model.config)
    _check_n_pairs(model, spec.n_pairs)
    shape = attention_shape(model.config)
    meta = {
        "method": spec.method,
        "model": fingerprint or {"shape": shape.as_dict()},
        "spec": asdict(spec),
        "versions": versions(),
    }
    if spec.method == "random":
        mask = ChannelMask.random(model.config, spec.n_pairs, spec.seed, spec.pair_layout)
        mask.meta.update(meta)
        return mask
    chunks = _as_chunks(tokenizer, texts_or_chunks, spec.n_sequences, spec.seq_len, spec.min_tokens)
    obs = make_observer(
        spec.method,
        shape.n_layers,
        shape.n_kv_heads,
        spec.pair_layout,
        **(_ca_kw(model, spec, max_elements) if spec.method == "ca" else {}),
    )
    t0 = time.perf_counter()
    run_capture(model, chunks, obs.update, progress=progress, desc=f"profile {spec.method}")
    scores_kv = obs.finalize()  # (L, Hkv, P)
    meta["calibration"] = {
        "source": str(texts_or_chunks) if isinstance(texts_or_chunks, (str, os.PathLike)) else "in-memory",
        "n_sequences": len(chunks),
        "tokens": [int(len(c)) for c in chunks],
        "chunks_hash": data_hash(chunks),
    }
    meta["profile_seconds"] = round(time.perf_counter() - t0, 3)
    scores = {f"{spec.method}_kv": scores_kv}
    if spec.method == "ca":
        scores["ca_q"] = obs.query_scores
        meta["ca"] = {
            "top_k": spec.top_k,
            "n_positions_requested": spec.n_positions,
            "n_positions_used": obs.positions_used,
        }
    mask = mask_from_pair_scores(scores_kv, spec.n_pairs, spec.pair_layout)  # (L, Hkv, D) bool
    return ChannelMask(mask, spec.pair_layout, spec.n_pairs, meta=meta, scores=scores)


def profile_ca(
    model,
    tokenizer,
    texts,
    n_pairs: int = 8,
    pair_layout: str = "rotate_half",
    n_sequences: int = 16,
    seq_len: int = 8192,
    n_positions: int = 512,
    top_k: int = 256,
    min_tokens: int = 512,
    fingerprint: dict | None = None,
    progress: bool = True,
    max_elements: int | None = None,
) -> ChannelMask:
    """CA mask: top-``n_pairs`` RoPE pairs per (layer, KV head) by Contextual Agreement.

    ``texts``: a data name/path (see ``fcboost.data.resolve_data_file``), a list of texts, or token
    chunks. Returns a ``ChannelMask`` with ``scores["ca_q"]`` ``(L, Hq, d/2)`` and ``scores["ca_kv"]``
    ``(L, Hkv, d/2)``.
    """
    spec = MaskSpec(
        "ca",
        n_pairs,
        pair_layout,
        str(texts) if isinstance(texts, (str, os.PathLike)) else "in-memory",
        n_sequences,
        seq_len,
        min_tokens,
        n_positions,
        top_k,
    )
    return build_mask(model, tokenizer, texts, spec, fingerprint, progress, max_elements)


def mask_key(fingerprint: dict, spec: MaskSpec, data_file_hash: str | None) -> str:
    """Cache key: ``<method>-<layout>-F<n>-<sha16>`` of (fingerprint, spec fields, data hash)."""
    payload = {"model": fingerprint, "spec": spec.key_fields(), "data_hash": data_file_hash}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{spec.method}-{spec.pair_layout}-F{spec.n_pairs}-{digest}"


def get_or_build_mask(
    mask_dir: str | os.PathLike, loaded: LoadedModel, spec: MaskSpec, progress: bool = True
) -> ChannelMask:
    """Load the mask of (``loaded.fingerprint``, ``spec``) from ``mask_dir``, or build and save it there."""
    data_file = None if spec.method == "random" else resolve_data_file(spec.data)
    file_hash = None if data_file is None else data_hash(data_file)
    key = mask_key(loaded.fingerprint, spec, file_hash)
    path = Path(mask_dir) / f"{key}.safetensors"
    shape = attention_shape(loaded.model.config)
    if path.exists():
        mask = ChannelMask.load(path)
        mask.check_compatible(shape.n_layers, shape.n_kv_heads, shape.head_dim)
        log.info("mask cache hit: %s", path)
        return mask
    mask = build_mask(loaded.model, loaded.tokenizer, data_file, spec, loaded.fingerprint, progress)
    if data_file is not None:
        mask.meta["calibration"].update({"data": spec.data, "file": str(data_file), "data_hash": file_hash})
    mask.meta["cache_key"] = key
    mask.save(path)
    log.info("mask built and cached: %s", path)
    return mask


def chunks_for(tokenizer, spec: MaskSpec) -> Sequence[torch.Tensor]:
    """The calibration chunks a spec profiles on (for analyses on the same data)."""
    return calibration_chunks(
        tokenizer, resolve_data_file(spec.data), spec.n_sequences, spec.seq_len, spec.min_tokens
    )
