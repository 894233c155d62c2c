"""Teacher-forced fidelity of a quantized KV cache against the 16-bit cache on the same tokens.

For each token chunk: prefill the first ``prefill`` tokens, then feed the rest one at a time;
at every position ``t >= min_pos`` compare the next-token distribution with the 16-bit model's:
mean KL(fp16 || quantized), top-1 agreement, NLL of the true next token (both caches).

Two equivalent ways to get the quantized logits:

- ``mode="decode"``: the real thing, a :class:`QuantizedKVCache` fed token by token (slow on CPU);
- ``mode="simulate"`` (default): one forward pass with an attention function that, for query t
  and key/value j, uses the quantized version exactly when the decode-time cache would show it
  (key page p from ``t >= S + (p+1)P + 1``, value j from ``t >= j + W + 1``). Pages and values are
  quantized by the same functions and selectors as the cache, so both modes agree up to fp
  rounding of the attention arithmetic (a test checks it).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from fcboost.masks.mask import ChannelMask
from fcboost.quant.config import KVQuantConfig
from fcboost.quant.mixed import dequantize_key_pages, dequantize_values, quantize_key_pages, quantize_values

SIM_ATTENTION = "fcboost_simulate"
_ACTIVE: dict = {}


def _visibility(T: int, cfg: KVQuantConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
    """bool ``(T, T)`` masks: [t, j] True where query t sees key j / value j quantized."""
    t = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    S, P, W = cfg.n_sink, cfg.page_size, cfg.window
    page = torch.div(j - S, P, rounding_mode="floor")
    key_q = (j >= S) & (t >= S + (page + 1) * P + 1)
    val_q = (j >= S) & (t >= j + W + 1)
    return key_q, val_q


def quantized_kv(layer, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dequantized keys/values ``(B, H, T, D)`` as the cache would store them once quantized
    (sink and incomplete tail pages left as they are: they are never shown quantized)."""
    cfg, (B, _, T, D) = layer.cfg, key.shape
    if cfg.passthrough:
        return key, value
    S, P = cfg.n_sink, cfg.page_size
    kq, vq = key.clone(), value.clone()
    n_pages = max(0, (T - S) // P)
    for b in range(B):
        if n_pages:
            pages = key[b, :, S : S + n_pages * P].unflatten(1, (n_pages, P))  # (H, n_p, P, D)
            pk = quantize_key_pages(
                pages, cfg.key_bits, cfg.boost_bits, layer.selector.key_boost(pages), layer.n_boost
            )
            deq = dequantize_key_pages(pk, P, cfg.key_bits, cfg.boost_bits)
            kq[b, :, S : S + n_pages * P] = deq.flatten(1, 2).to(key.dtype)
        if T > S:
            is_boost = layer.selector.value_boost()
            nb = layer.n_boost if is_boost is not None else 0
            pv = quantize_values(value[b, :, S:], cfg.value_bits, cfg.boost_bits, is_boost, nb)
            deq = dequantize_values(pv, D, cfg.value_bits, cfg.boost_bits, layer._value_idx())
            vq[b, :, S:] = deq.to(value.dtype)
    return kq, vq


def simulated_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """AttentionInterface function: full-sequence attention with decode-time quantization visibility.

    query ``(B, Hq, T, D)``, key/value ``(B, Hkv, T, D)`` (post-RoPE) -> ``((B, T, Hq, D), None)``.
    """
    cache = _ACTIVE["cache"]
    layer = cache.layers[module.layer_idx]
    B, Hq, T, D = query.shape
    if key.shape[2] != T:
        raise RuntimeError("the simulated attention runs on a whole sequence without a cache")
    kq, vq = quantized_kv(layer, key, value)
    rep = Hq // key.shape[1]
    k, v, kq, vq = (x.repeat_interleave(rep, dim=1) for x in (key, value, kq, vq))  # (B, Hq, T, D)
    scaling = scaling if scaling is not None else 1 / math.sqrt(D)
    key_q, val_q = _visibility(T, layer.cfg, query.device)
    logits = torch.where(key_q, query @ kq.transpose(-1, -2), query @ k.transpose(-1, -2)).float() * scaling
    allowed = torch.ones(T, T, dtype=torch.bool, device=query.device).tril()
    if attention_mask is not None:
        am = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        allowed = allowed & am
    logits = logits.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(logits, dim=-1).to(query.dtype)  # (B, Hq, T, T)
    out = (p * ~val_q) @ v + (p * val_q) @ vq
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SIM_ATTENTION, simulated_attention)
    AttentionMaskInterface.register(SIM_ATTENTION, sdpa_mask)


@contextmanager
def simulation(model, quant_config: KVQuantConfig, mask: ChannelMask | None = None):
    """Within the block, ``model(ids)`` computes teacher-forced logits of a decode-time quantized cache."""
    from fcboost.cache import QuantizedKVCache

    _register()
    previous = model.config._attn_implementation
    _ACTIVE["cache"] = QuantizedKVCache(model.config, quant_config, mask=mask)
    model.set_attn_implementation(SIM_ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
        _ACTIVE.clear()


@torch.no_grad()
def decode_logits(
    model, ids: torch.Tensor, quant_config: KVQuantConfig, mask: ChannelMask | None = None, prefill: int = 64
) -> torch.Tensor:
    """Logits ``(B, T, V)``: prefill ``prefill`` tokens into a fresh cache, then one token at a time."""
    from fcboost.cache import QuantizedKVCache

    cache = QuantizedKVCache(model.config, quant_config, mask=mask)
    outs = [model(ids[:, :prefill], past_key_values=cache, use_cache=True).logits]
    for t in range(prefill, ids.shape[1]):
        outs.append(model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
    return torch.cat(outs, dim=1)


@torch.no_grad()
def quantized_logits(
    model,
    ids: torch.Tensor,
    quant_config: KVQuantConfig,
    mask: ChannelMask | None = None,
    prefill: int = 64,
    mode: str = "simulate",
) -> torch.Tensor:
    """Teacher-forced logits ``(B, T, V)`` under the quantized cache (see module docstring)."""
    if mode == "decode":
        return decode_logits(model, ids, quant_config, mask, prefill)
    if mode != "simulate":
        raise ValueError(f"mode={mode!r} is unknown; expected 'simulate' or 'decode'")
    with simulation(model, quant_config, mask):
        return model(ids, use_cache=False).logits


@torch.no_grad()
def fidelity(
    model,
    chunks: list[torch.Tensor] | torch.Tensor,
    quant_config: KVQuantConfig,
    mask: ChannelMask | None = None,
    prefill: int = 64,
    min_pos: int = 256,
    mode: str = "simulate",
    reference: list[torch.Tensor] | None = None,
) -> dict:
    """Mean KL(fp16 || quant), top-1 agreement and NLLs over positions ``>= min_pos`` of all chunks.

    ``chunks``: 1-D LongTensors of equal or different lengths (> ``min_pos + 1``).
    ``reference``: optional precomputed fp16 log-probs per chunk (``(T, V)``) to share across methods.
    """
    if isinstance(chunks, torch.Tensor):
        chunks = list(chunks) if chunks.ndim == 2 else [chunks]
    device = next(model.parameters()).device
    kl_sum = agree = nll_q = nll_f = 0.0
    n = 0
    for i, ids in enumerate(chunks):
        if ids.ndim != 1 or ids.numel() <= min_pos + 1:
            raise ValueError(
                f"chunk {i} must be 1-D with more than min_pos+1={min_pos + 1} tokens; got {tuple(ids.shape)}"
            )
        x = ids.to(device)[None]
        lp_f = reference[i] if reference is not None else fp16_logprobs(model, x[0])
        lp_q = torch.log_softmax(quantized_logits(model, x, quant_config, mask, prefill, mode)[0].float(), -1)
        sl = slice(min_pos, x.shape[1] - 1)
        f, q, target = lp_f[sl], lp_q[sl], x[0, min_pos + 1 :]
        kl_sum += float((f.exp() * (f - q)).sum(-1).sum())
        agree += float((f.argmax(-1) == q.argmax(-1)).sum())
        nll_q -= float(q.gather(-1, target[:, None]).sum())
        nll_f -= float(f.gather(-1, target[:, None]).sum())
        n += target.numel()
    return {
        "kl": kl_sum / n,
        "top1_agree": agree / n,
        "nll": nll_q / n,
        "nll_fp16": nll_f / n,
        "ppl": math.exp(nll_q / n),
        "n_positions": n,
    }


@torch.no_grad()
def fp16_logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    """Log-probs ``(T, V)`` (fp32) of the unquantized model on 1-D ``ids``."""
    return F.log_softmax(model(ids[None], use_cache=False).logits[0].float(), -1)
