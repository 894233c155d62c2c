"""`QuantizedKVCache`: a transformers v5 ``Cache`` of :class:`QuantizedLayer` objects."""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from fcboost.cache.layer import QuantizedLayer
from fcboost.masks.mask import ChannelMask
from fcboost.models import attention_shape, check_supported
from fcboost.quant.config import KVQuantConfig
from fcboost.quant.mixed import boost_index
from fcboost.quant.selectors import DynamicMagnitude, NoBoost, StaticMask


class QuantizedKVCache(Cache):
    """KIVI-style 2-bit KV cache with optional channel boost; pass a fresh one to every ``generate``.

    Args:
        model_config: the HF config of the model (RoPE, full attention).
        quant_config: a :class:`KVQuantConfig` (``KVQuantConfig.kivi()``, ``.kitty()``, ``.static()``...).
        mask: a :class:`ChannelMask` ``(layers, kv_heads, head_dim)``, required by ``selector="static"``.
        attention_mask: optional ``(B, T)`` 0/1 prompt mask of a left-padded batch. Without it, pad
            counts are inferred from the ``position_ids`` that ``generate`` passes at prefill.
        read_path: ``"reference"`` (a dequantized mirror, any attention) or ``"fused"`` (no mirror;
            needs ``model.set_attn_implementation("fcboost_fused")`` after ``import fcboost.attention``:
            decode steps run the Triton kernel on the packed state).

    Example::

        cache = QuantizedKVCache(model.config, KVQuantConfig.kitty(n_boost=16))
        out = model.generate(**inputs, past_key_values=cache, max_new_tokens=256)
        print(cache.nbytes())
    """

    def __init__(
        self,
        model_config,
        quant_config: KVQuantConfig,
        mask: ChannelMask | None = None,
        attention_mask: torch.Tensor | None = None,
        read_path: str = "reference",
    ):
        check_supported(model_config)
        shape = attention_shape(model_config)
        qc = quant_config
        if qc.selector == "static":
            if mask is None:
                raise ValueError("selector='static' needs a ChannelMask (mask=...); got None")
            mask.check_compatible(shape.n_layers, shape.n_kv_heads, shape.head_dim)
        elif mask is not None:
            raise ValueError(
                f"a mask was given but selector={qc.selector!r} ignores it; use KVQuantConfig.static()"
            )
        if qc.n_boost > shape.head_dim:
            raise ValueError(f"n_boost={qc.n_boost} exceeds head_dim={shape.head_dim}")
        if not qc.passthrough and shape.head_dim % (8 // min(qc.value_bits, 8)):
            raise ValueError(f"head_dim={shape.head_dim} is not a multiple of the value packing unit")
        layers = []
        for i in range(shape.n_layers):
            boost_idx = None
            if qc.passthrough:
                sel = NoBoost()
            elif qc.selector == "dynamic_magnitude":
                sel = DynamicMagnitude(qc.n_boost)
            elif qc.selector == "static":
                m = mask.layer(i)
                sel = StaticMask(m, qc.boost_values)
                boost_idx = boost_index(m, sel.n_boost).to(torch.int16)  # (H, nb)
            else:
                sel = NoBoost()
            layers.append(QuantizedLayer(qc, sel, i, boost_idx))
        if read_path not in ("reference", "fused"):
            raise ValueError(f"read_path={read_path!r} is unknown; expected 'reference' or 'fused'")
        if read_path == "fused" and qc.passthrough:
            raise ValueError("read_path='fused' needs a quantized config; a 16-bit cache reads with SDPA")
        for layer in layers:
            layer.read_path = read_path
        super().__init__(layers=layers)
        self.read_path = read_path
        self._model_config = model_config
        self.quant_config = qc
        self.mask = mask
        self.shape = shape
        if attention_mask is not None:
            self.set_padding(attention_mask)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """``Cache.update``; the fused read path refuses a model that would attend with another function
        (it returns only the new tokens, so SDPA would silently ignore the cached ones)."""
        if self.read_path == "fused" and layer_idx == 0:
            impl = getattr(self._model_config, "_attn_implementation", None)
            if impl != "fcboost_fused":
                raise RuntimeError(
                    f"read_path='fused' needs the fused attention, but the model attends with {impl!r}: "
                    "`import fcboost.attention` and call model.set_attn_implementation('fcboost_fused')"
                )
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def set_padding(self, attention_mask: torch.Tensor) -> None:
        """Declare the left padding of the batch ``(B, T)`` before the first update."""
        if attention_mask.ndim != 2:
            raise ValueError(f"attention_mask must be (batch, seq); got shape {tuple(attention_mask.shape)}")
        am = attention_mask.bool()
        n_real = am.sum(-1)
        if not bool((am[:, -1] | (n_real == 0)).all()) or not bool(
            (
                am.long().cumsum(-1)
                == torch.arange(1, am.shape[1] + 1, device=am.device) - (am.shape[1] - n_real)[:, None]
            )
            .logical_or(~am)
            .all()
        ):
            raise ValueError("attention_mask must be left-padded (zeros first, then ones)")
        pads = (am.shape[1] - n_real).tolist()
        for layer in self.layers:
            if layer.is_initialized:
                raise RuntimeError("set_padding must be called before the first update")
            layer.n_pad = pads

    def nbytes(self) -> int:
        """Bytes of the packed state (codes, scales/zeros, 16-bit sink and buffers) for all layers."""
        return sum(layer.nbytes() for layer in self.layers)

    def fp16_nbytes(self) -> int:
        """Bytes a 16-bit cache would hold for the same real tokens (the comparison point)."""
        total = 0
        for layer in self.layers:
            if layer.is_initialized:
                layer.flush()
                total += 2 * sum(layer.n_real) * layer.H * layer.D * 2
        return total
