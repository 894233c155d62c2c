"""Observe post-RoPE queries and keys through the model's own attention path.

The observer is a registered attention function (``AttentionInterface``) that receives exactly what
the model's attention uses -- for Qwen3 after ``q_norm``/``k_norm`` and ``apply_rotary_pos_emb``,
i.e. the keys a cache stores -- hands them to a per-layer callback and then delegates to SDPA. No
modeling file is copied and no forward is patched; :func:`capture_qk` sets the implementation for
the duration of a ``with`` block and restores the previous one afterwards.

The callback sees ``(layer_idx, query (B, Hq, T, D), key (B, Hkv, T, D))`` and should reduce them to
statistics at once, so memory stays bounded (one layer's q/k at a time) for 8192-token sequences.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from fcboost.models import check_supported

IMPL_NAME = "fcboost_capture"
QKCallback = Callable[[int, torch.Tensor, torch.Tensor], None]

_active: list[QKCallback] = []  # stack of callbacks; the innermost `capture_qk` receives q/k


def _capture_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """AttentionInterface function: report q ``(B, Hq, T, D)``, k ``(B, Hkv, T, D)``, then run SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if _active:
        _active[-1](module.layer_idx, query.detach(), key.detach())
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPL_NAME, _capture_attention)
    AttentionMaskInterface.register(IMPL_NAME, sdpa_mask)


@contextmanager
def capture_qk(model: torch.nn.Module, callback: QKCallback) -> Iterator[None]:
    """Within the block every attention call of ``model`` first calls ``callback(layer_idx, q, k)``.

    Raises ``ValueError`` for a model type the profiler does not handle (see ``check_supported``).
    """
    check_supported(model.config)
    _register()
    previous = model.config._attn_implementation
    model.set_attn_implementation(IMPL_NAME)
    _active.append(callback)
    try:
        yield
    finally:
        _active.pop()
        model.set_attn_implementation(previous)


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The base model (no LM head): the (T, vocab) logits of a long prefill are not needed."""
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    return base if isinstance(base, torch.nn.Module) else model


@torch.inference_mode()
def run_capture(
    model: torch.nn.Module,
    chunks: Iterable[torch.Tensor],
    callback: QKCallback,
    progress: bool = True,
    desc: str = "capture q/k",
) -> int:
    """One prefill per chunk (LongTensor ``(T,)``) with ``callback`` observing every layer; returns #chunks."""
    device = next(model.parameters()).device
    chunks = list(chunks)
    decoder = _decoder(model)
    with capture_qk(model, callback):
        for ids in tqdm(chunks, desc=desc, disable=not progress):
            if ids.ndim != 1:
                raise ValueError(f"chunks must be 1-D token id tensors (T,); got shape {tuple(ids.shape)}")
            decoder(input_ids=ids.to(device)[None], use_cache=False)
    return len(chunks)
