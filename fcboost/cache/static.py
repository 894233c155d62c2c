"""Preallocated caches for a graph-captured decode step: packed 2-bit (``StaticQuantLayer``) and bf16.

Same timing rules and packed layout as :class:`fcboost.cache.layer.QuantizedLayer` (its module
docstring), but storage is allocated once for ``(max_batch, max_len)`` and the per-row counts
``n_real / n_pages / n_vq`` are int32 ``(B,)`` device tensors, so a decode step runs without host
syncs, concatenation or reallocation:

1. attention: :func:`fcboost.kernels.decode_attention.decode_attention` over the state plus the
   new token with a fixed grid (``n_splits``/``max_tiles`` from ``max_len``);
2. append: the new key/value go to the sink (row still short of S tokens), else to ``k_buf`` slot
   ``n_kbuf`` / ``v_win`` slot ``n_vwin`` (index_put with device indices);
3. flush with device-side predicates: every row launches one page pack (rows with more than P
   waiting keys write page ``n_pages``, the others a scratch page ``NP``) and one value pack (rows
   whose window holds more than W values write token ``n_vq``, the others a scratch slot ``NV``);
   flushed rows shift ``k_buf`` / ``v_win`` left (``torch.where``) and bump their counts.

Storage per layer (extra scratch entry at the end of the page / value axes):

| field            | shape                         |
|------------------|-------------------------------|
| sink_k, sink_v   | (B, H, S, D) model dtype      |
| k_buf            | (B, H, P+1, D) model dtype    |
| v_win            | (B, H, W+1, D) model dtype    |
| k_lo             | (B, H, NP+1, P/4, D) uint8    |
| k_hi             | (B, H, NP+1, P/4, nb) uint8   |
| k_idx            | (B, H, NP+1, nb) int16 (Kitty)|
| k_scale, k_zero  | (B, H, NP+1, D) fp16          |
| v_lo             | (B, H, NVc/64, 4, D/4, 16) uint8, interleaved (fcboost.quant.layout) |
| v_hi             | (B, H, NVc/64, 4, ceil(nb/4), 16) uint8, interleaved |
| v_scale, v_zero  | (B, H, NVc, G) fp16           |

with ``NP = max(0, (max_len - S - 1) // P)``, ``NV = max(0, max_len - S - W)`` and the value
capacity ``NVc`` = NV + 1 rounded up to whole 64-token steps (the scratch token is ``NV``). Prefill is
host-driven, one row at a time (:meth:`StaticQuantLayer.prefill_row`): the row's real tokens only
(padding never enters the state), flushed by the same pack kernels.
"""

from __future__ import annotations

import weakref

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from fcboost.models import attention_shape, check_supported
from fcboost.quant.config import KVQuantConfig
from fcboost.quant.core import storage_bits
from fcboost.quant.layout import STEP, steps

# layer_idx -> the static layer last updated (the attention function gets the module, not the cache)
# (weak references: a finished decoder's cache must be freeable before the next one is allocated)
_ACTIVE: dict[int, weakref.ref] = {}


def active_static_layer(layer_idx: int):
    ref = _ACTIVE.get(layer_idx)
    return None if ref is None else ref()


def quant_storage_shapes(cfg: KVQuantConfig, n_boost: int, H: int, D: int, max_len: int) -> dict:
    """Per-row storage shapes ``name -> (shape without B, dtype or None for the model dtype)``."""
    S, P, W = cfg.n_sink, cfg.page_size, cfg.window
    NP = max(0, (max_len - S - 1) // P) + 1  # + scratch page
    NV = steps(max(0, max_len - S - W) + 1) * STEP  # + scratch token, whole steps
    vboost = cfg.boost_values and n_boost > 0
    hb = storage_bits(cfg.boost_bits - cfg.key_bits)
    sh = {
        "sink_k": ((H, S, D), None),
        "sink_v": ((H, S, D), None),
        "k_buf": ((H, P + 1, D), None),
        "v_win": ((H, W + 1, D), None),
        "k_lo": ((H, NP, P * cfg.key_bits // 8, D), torch.uint8),
        "k_scale": ((H, NP, D), torch.float16),
        "k_zero": ((H, NP, D), torch.float16),
        "v_lo": ((H, NV // STEP, 4, D * cfg.value_bits // 8, 16), torch.uint8),
        "v_scale": ((H, NV, 2 if vboost else 1), torch.float16),
        "v_zero": ((H, NV, 2 if vboost else 1), torch.float16),
    }
    if n_boost:
        sh["k_hi"] = ((H, NP, P * hb // 8, n_boost), torch.uint8)
        if cfg.selector == "dynamic_magnitude":
            sh["k_idx"] = ((H, NP, n_boost), torch.int16)
    if vboost:
        vhb = storage_bits(cfg.boost_bits - cfg.value_bits)
        sh["v_hi"] = ((H, NV // STEP, 4, -(-n_boost * vhb // 8), 16), torch.uint8)
    return sh


def bytes_per_row(
    model_config, quant_config: KVQuantConfig | None, max_len: int, elem: int = 2, n_boost: int | None = None
) -> int:
    """Bytes one batch row of the preallocated cache takes for ``max_len`` tokens (all layers);
    ``n_boost``: a static mask's channels per head (default ``quant_config.n_boost``)."""
    s = attention_shape(model_config)
    if quant_config is None or quant_config.passthrough:
        return 2 * s.n_layers * s.n_kv_heads * (-(-max_len // 16) * 16) * s.head_dim * elem
    nb = (quant_config.n_boost if n_boost is None else n_boost) if quant_config.selector != "none" else 0
    total = 0
    for shape, dt in quant_storage_shapes(quant_config, nb, s.n_kv_heads, s.head_dim, max_len).values():
        n = 1
        for x in shape:
            n *= x
        total += n * (elem if dt is None else torch.empty(0, dtype=dt).element_size())
    return total * s.n_layers


class _StaticBase(CacheLayerMixin):
    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, layer_idx: int, B: int, max_len: int):
        super().__init__()
        self.layer_idx, self.B, self.max_len = layer_idx, B, max_len
        self.mode = "prefill"
        self.row = 0
        self.host_len = [0] * B  # real tokens per row as of the last prefill (host side)
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:  # storage is preallocated
        return None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Prefill: ``(1, H, n, D)`` of row ``self.row`` -> that row's K/V ``(1, H, t0 + n, D)`` for SDPA.
        Decode: ``(B, H, 1, D)`` returned as is; attention calls :meth:`decode` (state + new token)."""
        _ACTIVE[self.layer_idx] = weakref.ref(self)
        if self.mode == "decode":
            if key_states.shape[0] != self.B or key_states.shape[2] != 1:
                raise ValueError(f"decode update must be ({self.B}, H, 1, D); got {tuple(key_states.shape)}")
            return key_states, value_states
        if key_states.shape[0] != 1:
            raise ValueError(f"prefill runs one row at a time; got batch {key_states.shape[0]}")
        b, t0, n = self.row, self.host_len[self.row], key_states.shape[2]
        if t0 + n > self.max_len:
            raise ValueError(f"row {b}: {t0 + n} tokens exceed max_len={self.max_len}")
        if t0 > 0:
            k0, v0 = self.row_kv(b)  # (H, t0, D)
            out = torch.cat([k0[None], key_states], 2), torch.cat([v0[None], value_states], 2)
        else:
            out = key_states, value_states
        self.prefill_row(b, key_states[0], value_states[0])
        return out

    def get_seq_length(self) -> int:
        return max(self.host_len)

    def get_mask_sizes(self, query_length, *args) -> tuple[int, int]:
        q = query_length.shape[0] if isinstance(query_length, torch.Tensor) else int(query_length)
        return self.get_seq_length() + q, 0

    def get_max_length(self) -> int:
        return self.max_len

    def sync_host_len(self) -> None:
        self.host_len = [int(x) for x in self.n_real.tolist()]


class StaticQuantLayer(_StaticBase):
    """One layer of the preallocated packed cache (module docstring)."""

    def __init__(
        self,
        cfg: KVQuantConfig,
        layer_idx: int,
        B: int,
        max_len: int,
        H: int,
        D: int,
        dtype: torch.dtype,
        device,
        boost_idx: torch.Tensor | None = None,
    ):
        if (cfg.key_bits, cfg.value_bits) != (2, 2) or cfg.passthrough:
            raise ValueError(f"the static quantized cache needs 2-bit keys and values; got {cfg}")
        super().__init__(layer_idx, B, max_len)
        self.cfg, self.H, self.D, self.dtype, self.device = cfg, H, D, dtype, torch.device(device)
        self.n_boost = cfg.n_boost if cfg.selector != "none" else 0
        if cfg.selector == "static":
            if boost_idx is None:
                raise ValueError("selector='static' needs boost_idx (H, nb)")
            bi = boost_idx.long()
            if bi.ndim != 2 or bi.shape[0] != H or not bool((bi.diff(dim=-1) > 0).all()):
                raise ValueError(
                    f"boost_idx must be (H={H}, nb) strictly ascending channels per head (slot s holds "
                    f"channel boost_idx[h, s], as fcboost.quant.mixed.boost_index makes it); got "
                    f"{tuple(boost_idx.shape)} {boost_idx.tolist() if boost_idx.numel() <= 64 else ''}"
                )
            self.n_boost = boost_idx.shape[-1]
        self.boost_idx = None if boost_idx is None else boost_idx.to(self.device, torch.int16).contiguous()
        self.k_hi = self.k_idx = self.v_hi = None
        for name, (shape, dt) in quant_storage_shapes(cfg, self.n_boost, H, D, max_len).items():
            setattr(self, name, torch.zeros(B, *shape, dtype=dtype if dt is None else dt, device=self.device))
        i32 = dict(dtype=torch.int32, device=self.device)
        self.n_real, self.n_pages, self.n_vq = (torch.zeros(B, **i32) for _ in range(3))
        self.NP, self.NV = self.k_lo.shape[2] - 1, max(0, max_len - cfg.n_sink - cfg.window)
        self._rows = torch.arange(B, **i32)
        self._ar = self._rows.long()
        self._zeros = torch.zeros(B, **i32)
        self._ones = torch.ones(B, **i32)
        self.max_tiles = min(self.NP * cfg.page_size, self.NV) // 64  # the kernel's split count
        self._state = None

    # ---------------------------------------------------------------- counts (host, prefill)
    def _pages(self, n: int) -> int:
        return max(0, (n - self.cfg.n_sink - 1) // self.cfg.page_size)

    def _vq(self, n: int) -> int:
        return max(0, n - self.cfg.n_sink - self.cfg.window)

    def state(self):
        """:class:`PackedKVState` views of the storage (real entries only on the page/value axes)."""
        from fcboost.kernels.state import PackedKVState

        if self._state is None:
            self._state = PackedKVState(
                self.cfg,
                self.sink_k,
                self.sink_v,
                self.k_buf,
                self.v_win,
                self.k_lo,
                self.k_scale,
                self.k_zero,
                self.v_lo,
                self.v_scale,
                self.v_zero,
                self.n_real,
                self.n_pages,
                self.n_vq,
                self.k_hi,
                self.k_idx,
                self.boost_idx if self.k_hi is not None else None,
                self.v_hi,
            )
        return self._state

    def row_kv(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ``b``'s real tokens as attention sees them, ``(H, n_real, D)`` each (dequantized)."""
        return self.state().dequantized(b)

    # ------------------------------------------------------------------------ flushes
    def _pack_keys(self, src, rows, src_tok, dst_page) -> None:
        from fcboost.kernels.quant_pack import pack_keys_into

        pack_keys_into(self, src, rows, src_tok, dst_page)

    def _pack_values(self, src, rows, src_tok, dst_tok, count, max_count: int) -> None:
        from fcboost.kernels.quant_pack import pack_values_into

        pack_values_into(self, src, rows, src_tok, dst_tok, count, max_count)

    def prefill_row(self, b: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append real tokens ``k``/``v`` ``(H, m, D)`` to row ``b`` and flush (host-driven)."""
        c, r, m = self.cfg, self.host_len[b], k.shape[1]
        S, P = c.n_sink, c.page_size
        s = max(0, min(m, S - r))
        if s:
            self.sink_k[b, :, r : r + s] = k[:, :s]
            self.sink_v[b, :, r : r + s] = v[:, :s]
        kr, vr = k[:, s:], v[:, s:]
        n1 = r + m
        if kr.shape[1]:
            np0, np1 = self._pages(r), self._pages(n1)
            nkb = r - min(r, S) - np0 * P
            waiting = torch.cat([self.k_buf[b, :, :nkb], kr], 1).contiguous()  # (H, nkb + m', D)
            nn = np1 - np0
            if nn:
                src = waiting[None].expand(self.B, -1, -1, -1)  # batch stride 0: row b reads it
                self._pack_keys(src, [b] * nn, [i * P for i in range(nn)], [np0 + i for i in range(nn)])
            rest = waiting[:, nn * P :]
            self.k_buf[b, :, : rest.shape[1]] = rest
            vq0, vq1 = self._vq(r), self._vq(n1)
            nvw = r - min(r, S) - vq0
            win = torch.cat([self.v_win[b, :, :nvw], vr], 1).contiguous()  # (H, nvw + m', D)
            nl = vq1 - vq0
            if nl:
                self._pack_values(win[None].expand(self.B, -1, -1, -1), [b], [0], [vq0], [nl], nl)
            rest = win[:, nl:]
            self.v_win[b, :, : rest.shape[1]] = rest
            self.n_pages[b] = np1
            self.n_vq[b] = vq1
        self.n_real[b] = n1
        self.host_len[b] = n1

    # -------------------------------------------------------------------------- decode
    def decode(
        self, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, scaling: float
    ) -> torch.Tensor:
        """q ``(B, Hq, D)``, k_new/v_new ``(B, H, D)`` -> attention output ``(B, Hq, D)``; then append
        the token and flush, all on the device (graph-capturable)."""
        from fcboost.kernels.decode_attention import decode_attention

        out = decode_attention(q, self.state(), scaling, k_new, v_new, max_tiles=self.max_tiles)
        self.append_decode(k_new, v_new)
        return out

    def append_decode(self, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        """Append one token per row ``(B, H, D)`` and flush per the timing rules, without host syncs."""
        c, ar = self.cfg, self._ar
        S, P, W = c.n_sink, c.page_size, c.window
        n = self.n_real.long()
        npg, nvq = self.n_pages.long(), self.n_vq.long()
        in_sink = (n < S)[:, None, None]  # (B, 1, 1)
        si = n.clamp(max=S - 1)
        for buf, x in ((self.sink_k, k_new), (self.sink_v, v_new)):
            buf[ar, :, si] = torch.where(in_sink, x, buf[ar, :, si])
        nkb = (n - S - npg * P).clamp(min=0)
        ki = nkb.clamp(max=P)
        self.k_buf[ar, :, ki] = torch.where(in_sink, self.k_buf[ar, :, ki], k_new)
        nvw = (n - S - nvq).clamp(min=0)
        vi = nvw.clamp(max=W)
        self.v_win[ar, :, vi] = torch.where(in_sink, self.v_win[ar, :, vi], v_new)
        self.n_real.add_(1)
        past = n >= S
        kflush = past & (nkb + 1 > P)  # (B,)
        dst = torch.where(kflush, npg, -1).to(torch.int32)  # -1: the kernel skips the row
        self._pack_keys(self.k_buf, self._rows, self._zeros, dst)
        kf = kflush[:, None, None]
        self.k_buf[:, :, 0] = torch.where(kf, self.k_buf[:, :, P], self.k_buf[:, :, 0])
        self.n_pages.add_(kflush.to(torch.int32))
        vflush = past & (nvw + 1 > W)
        dst = torch.where(vflush, nvq, self.NV).to(torch.int32)
        self._pack_values(self.v_win, self._rows, self._zeros, dst, self._ones, 1)
        shifted = self.v_win[:, :, 1:].clone()  # (B, H, W, D)
        self.v_win[:, :, :W] = torch.where(vflush[:, None, None, None], shifted, self.v_win[:, :, :W])
        self.n_vq.add_(vflush.to(torch.int32))

    def copy_row(self, src: int, dst: slice | list[int]) -> None:
        """Copy row ``src``'s whole state onto rows ``dst`` (benchmarks: B copies of one prompt)."""
        for name in (
            "sink_k",
            "sink_v",
            "k_buf",
            "v_win",
            "k_lo",
            "k_hi",
            "k_idx",
            "k_scale",
            "k_zero",
            "v_lo",
            "v_hi",
            "v_scale",
            "v_zero",
            "n_real",
            "n_pages",
            "n_vq",
        ):
            t = getattr(self, name)
            if t is not None:
                t[dst] = t[src : src + 1]
        self.sync_host_len()


class StaticBf16Layer(_StaticBase):
    """Plain 16-bit preallocated cache ``(B, H, max_len, D)``: decode writes the token at ``n_real``
    and attends with SDPA over all ``max_len`` slots under a device-built length mask."""

    def __init__(self, layer_idx: int, B: int, max_len: int, H: int, D: int, dtype, device):
        super().__init__(layer_idx, B, max_len)
        L = -(-max_len // 16) * 16  # mask rows aligned for the memory-efficient SDPA kernel
        self.k = torch.zeros(B, H, L, D, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.n_real = torch.zeros(B, dtype=torch.int32, device=device)
        self._ar = torch.arange(B, device=device)
        self._pos = torch.arange(L, device=device)

    def row_kv(self, b: int):
        n = self.host_len[b]
        return self.k[b, :, :n], self.v[b, :, :n]

    def prefill_row(self, b: int, k: torch.Tensor, v: torch.Tensor) -> None:
        r, m = self.host_len[b], k.shape[1]
        self.k[b, :, r : r + m] = k
        self.v[b, :, r : r + m] = v
        self.n_real[b] = r + m
        self.host_len[b] = r + m

    def decode(
        self, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, scaling: float
    ) -> torch.Tensor:
        B, Hq, D = q.shape
        H = self.k.shape[1]
        pos = self.n_real.long()
        self.k[self._ar, :, pos] = k_new
        self.v[self._ar, :, pos] = v_new
        self.n_real.add_(1)
        mask = (self._pos[None, :] < self.n_real[:, None].long())[:, None, None, :]  # (B, 1, 1, L)
        qg = q.reshape(B, H, Hq // H, D)  # the G query heads of a KV head as query rows
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            out = torch.nn.functional.scaled_dot_product_attention(
                qg, self.k, self.v, attn_mask=mask, scale=scaling
            )
        return out.reshape(B, Hq, D)

    def copy_row(self, src: int, dst) -> None:
        for t in (self.k, self.v, self.n_real):
            t[dst] = t[src : src + 1]
        self.sync_host_len()


class StaticKVCache(Cache):
    """Preallocated cache for :class:`fcboost.decode.FastDecoder`; ``quant_config=None`` is 16-bit.

    Args:
        model_config: HF config; quant_config: 2-bit :class:`KVQuantConfig` or None; mask: the
        :class:`ChannelMask` of ``selector="static"``; max_batch, max_len: capacity; dtype, device.
    """

    def __init__(
        self,
        model_config,
        quant_config: KVQuantConfig | None,
        mask=None,
        *,
        max_batch: int,
        max_len: int,
        dtype: torch.dtype,
        device,
    ):
        check_supported(model_config)
        s = attention_shape(model_config)
        if max_batch < 1 or max_len < 1:
            raise ValueError(f"max_batch={max_batch} and max_len={max_len} must be >= 1")
        layers = []
        for i in range(s.n_layers):
            if quant_config is None or quant_config.passthrough:
                layers.append(StaticBf16Layer(i, max_batch, max_len, s.n_kv_heads, s.head_dim, dtype, device))
                continue
            bidx = None
            if quant_config.selector == "static":
                from fcboost.quant.mixed import boost_index

                if mask is None:
                    raise ValueError("selector='static' needs a ChannelMask (mask=...); got None")
                mask.check_compatible(s.n_layers, s.n_kv_heads, s.head_dim)
                m = mask.layer(i)
                bidx = boost_index(m, int(m.sum(-1).max())).to(torch.int16)  # (H, nb)
            elif mask is not None:
                raise ValueError(f"a mask was given but selector={quant_config.selector!r} ignores it")
            layers.append(
                StaticQuantLayer(
                    quant_config, i, max_batch, max_len, s.n_kv_heads, s.head_dim, dtype, device, bidx
                )
            )
        super().__init__(layers=layers)
        self.quant_config, self.max_batch, self.max_len = quant_config, max_batch, max_len

    def set_mode(self, mode: str, row: int = 0) -> None:
        if mode not in ("prefill", "decode"):
            raise ValueError(f"mode={mode!r}; expected 'prefill' or 'decode'")
        for layer in self.layers:
            layer.mode, layer.row = mode, row

    def copy_row(self, src: int, dst) -> None:
        for layer in self.layers:
            layer.copy_row(src, dst)

    def nbytes(self) -> int:
        """Bytes of the preallocated storage (all rows, all layers)."""
        return sum(
            t.numel() * t.element_size()
            for layer in self.layers
            for t in vars(layer).values()
            if isinstance(t, torch.Tensor) and t.ndim >= 3
        )
