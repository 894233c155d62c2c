"""The fused read path as a transformers attention function: ``fcboost_fused``.

Importing this module registers ``fcboost_fused`` in ``AttentionInterface`` (and ``sdpa_mask`` in
``AttentionMaskInterface`` so prefill keeps its causal/padding mask). With a
``QuantizedKVCache(..., read_path="fused")`` and ``model.set_attn_implementation("fcboost_fused")``:

- decode (query length 1): the layer's packed state (:meth:`QuantizedLayer.fused_state`, found by
  ``module.layer_idx`` in the registry the layer's update fills) plus the new token's 16-bit key and
  value go through :func:`fcboost.kernels.decode_attention.decode_attention`;
- prefill (and any call without a fused-path layer): SDPA on the key/value the cache returned.

Example::

    import fcboost.attention  # registers "fcboost_fused"
    model.set_attn_implementation("fcboost_fused")
    cache = QuantizedKVCache(model.config, KVQuantConfig.static(), mask=mask, read_path="fused")
    model.generate(**inputs, past_key_values=cache, max_new_tokens=64)
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from fcboost.kernels.decode_attention import decode_attention
from fcboost.kernels.state import active_layer

NAME = "fcboost_fused"


def fcboost_fused(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query (B, Hq, Lq, D), key/value (B, H, T, D) -> (out (B, Lq, Hq, D), None)."""
    layer = active_layer(getattr(module, "layer_idx", -1))
    pending = None if layer is None else layer._pending
    if query.shape[2] == 1 and pending is not None and pending[1].shape[2] == 1 and pending[1] is key:
        st, k_new, v_new = layer.fused_state()
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        P = st.cfg.page_size
        # 64-token page tiles of the longest row, from the host-side counts (no device sync)
        max_tiles = max(min(layer.n_pages(b) * P, layer.n_vq(b)) // 64 for b in range(layer.B))
        out = decode_attention(query[:, :, 0], st, scale, k_new, v_new, max_tiles=max_tiles)
        return out[:, None], None
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


AttentionInterface.register(NAME, fcboost_fused)
AttentionMaskInterface.register(NAME, sdpa_mask)
