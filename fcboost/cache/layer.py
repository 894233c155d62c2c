"""One layer of the quantized KV cache: packed state, timing rules, and the reference read path.

Timing (Kitty's simulation cache, REFERENCE.md §1): every update first attends with the current
state plus the new tokens in 16 bits, then quantizes. Per batch row, over its *real* tokens (left
padding never enters the state):

- the first ``S`` tokens are sink tokens, kept in 16 bits forever;
- keys wait in a 16-bit buffer; while more than ``P`` wait, the oldest ``P`` become a page
  (per-channel min/max over the page), so page p is first seen quantized by the query at
  position ``S + (p+1)P + 1``;
- values stay in a 16-bit window of the ``W`` most recent; older ones are quantized one token at
  a time (per-token min/max), so value k is first seen quantized by the query at ``k + W + 1``.

The state after any sequence of updates depends only on the tokens, never on how they were chunked.

Storage per layer (B rows, H KV heads, head_dim D, capacity NP pages / NV tokens), see
:mod:`fcboost.quant.mixed` for the packed planes:

| field                 | shape                    | dtype      |
|-----------------------|--------------------------|------------|
| sink_k, sink_v        | (B, H, S, D)             | model dtype |
| k_lo                  | (B, H, NP, P*b/8, D)     | uint8      |
| k_hi                  | (B, H, NP, P*h/8, nb)    | uint8 (boost only) |
| k_idx                 | (B, H, NP, nb)           | int16 (dynamic selector) |
| k_scale, k_zero       | (B, H, NP, D)            | float16    |
| k_buf                 | (B, H, >=P+1, D)         | model dtype |
| v_lo                  | (B, H, NV/64, 4, D*b/8, 16) | uint8, interleaved (fcboost.quant.layout) |
| v_hi                  | (B, H, NV/64, 4, ceil(nb*h/8), 16) | uint8, interleaved (boost_values only) |
| v_scale, v_zero       | (B, H, NV, G)            | float16    |
| v_win                 | (B, H, >=W+1, D)         | model dtype |

Read paths (``read_path``): ``"reference"`` keeps ``mirror_k/mirror_v`` ``(B, H, T, D)`` (below);
``"fused"`` keeps no mirror: a decode step's attention (:mod:`fcboost.attention`) reads the packed
state plus the pending new token with the Triton kernel, a fresh prefill attends its own 16-bit
tokens, a chunked prefill onto a state gets the dequantized state plus its tokens.

The reference read path also keeps ``mirror_k/mirror_v`` ``(B, H, T, D)``: what attention sees
(16-bit tokens and the dequantized pages/values, pad columns as given), so a decode step costs one
write instead of dequantizing the whole cache. ``nbytes()`` counts the packed state only.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import CacheLayerMixin

from fcboost.quant.config import KVQuantConfig
from fcboost.quant.layout import STEP, steps, to_tokens, write_tokens
from fcboost.quant.mixed import (
    PackedKeys,
    dequantize_key_pages,
    dequantize_values,
    quantize_key_pages,
    quantize_values,
)


def _grow(t: torch.Tensor | None, dim: int, need: int, multiple: int = 1) -> torch.Tensor | None:
    """Return ``t`` with at least ``need`` entries along ``dim`` (capacity doubles, rounded up to a
    multiple of ``multiple``)."""
    if t is None or t.shape[dim] >= need:
        return t
    shape = list(t.shape)
    shape[dim] = -(-max(need, 2 * t.shape[dim]) // multiple) * multiple - t.shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


class QuantizedLayer(CacheLayerMixin):
    """A cache layer holding packed 2-bit pages (see module docstring)."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(
        self, config: KVQuantConfig, selector, layer_idx: int, boost_idx: torch.Tensor | None = None
    ):
        super().__init__()
        self.cfg = config
        self.selector = selector
        self.layer_idx = layer_idx
        self.n_boost = selector.n_boost
        self.boost_idx = boost_idx  # (H, nb) for a static mask
        self.n_pad: list[int] | None = None
        self.n_real: list[int] = []
        self.seq_len = 0
        self._pending: tuple | None = None
        self.read_path = "reference"

    # ----------------------------------------------------------------------------- state
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        B, H, _, D = key_states.shape
        c, dev, dt = self.cfg, key_states.device, key_states.dtype
        self.device, self.dtype, self.B, self.H, self.D = dev, dt, B, H, D
        if self.boost_idx is not None:
            self.boost_idx = self.boost_idx.to(dev)  # the static mask's channels live with the state
        u8, f16 = dict(dtype=torch.uint8, device=dev), dict(dtype=torch.float16, device=dev)
        self.sink_k = torch.zeros(B, H, c.n_sink, D, dtype=dt, device=dev)
        self.sink_v = torch.zeros_like(self.sink_k)
        self.k_buf = torch.zeros(B, H, c.page_size + 1, D, dtype=dt, device=dev)
        self.v_win = torch.zeros(B, H, c.window + 1, D, dtype=dt, device=dev)
        self.mirror_k = torch.zeros(B, H, 0, D, dtype=dt, device=dev)
        self.mirror_v = torch.zeros(B, H, 0, D, dtype=dt, device=dev)
        self.k_lo = self.k_hi = self.k_idx = self.k_scale = self.k_zero = None
        self.v_lo = self.v_hi = self.v_scale = self.v_zero = None
        if not c.passthrough:
            P, kb, nb = c.page_size, c.key_bits, self.n_boost
            self.k_lo = torch.zeros(B, H, 0, P * kb // 8, D, **u8)
            self.k_scale = torch.zeros(B, H, 0, D, **f16)
            self.k_zero = torch.zeros(B, H, 0, D, **f16)
            if nb:
                hb = _hi_storage(c.key_bits, c.boost_bits)
                self.k_hi = torch.zeros(B, H, 0, P * hb // 8, nb, **u8)
                if self.boost_idx is None:
                    self.k_idx = torch.zeros(B, H, 0, nb, dtype=torch.int16, device=dev)
            vb, G = c.value_bits, 2 if self._value_boost else 1
            self.v_lo = torch.zeros(B, H, 0, 4, D * vb // 8, 16, **u8)
            self.v_scale = torch.zeros(B, H, 0, G, **f16)
            self.v_zero = torch.zeros(B, H, 0, G, **f16)
            if self._value_boost:
                hb = _hi_storage(c.value_bits, c.boost_bits)
                self.v_hi = torch.zeros(B, H, 0, 4, -(-nb * hb // 8), 16, **u8)
        self.n_real = [0] * B
        if self.n_pad is None:
            self.n_pad = [0] * B
        self.is_initialized = True

    @property
    def _value_boost(self) -> bool:
        return self.cfg.boost_values and self.n_boost > 0

    def n_sink(self, b: int) -> int:
        return min(self.n_real[b], self.cfg.n_sink)

    def n_pages(self, b: int) -> int:
        if self.cfg.passthrough:
            return 0
        return max(0, (self.n_real[b] - self.cfg.n_sink - 1) // self.cfg.page_size)

    def n_kbuf(self, b: int) -> int:
        return self.n_real[b] - self.n_sink(b) - self.n_pages(b) * self.cfg.page_size

    def n_vq(self, b: int) -> int:
        if self.cfg.passthrough:
            return 0
        return max(0, self.n_real[b] - self.cfg.n_sink - self.cfg.window)

    def n_vwin(self, b: int) -> int:
        return self.n_real[b] - self.n_sink(b) - self.n_vq(b)

    # ---------------------------------------------------------------------------- update
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append ``key_states``/``value_states`` ``(B, H, n, D)`` and return what attention sees,
        ``(B, H, T, D)`` each: the state before this update (dequantized) and the new tokens in 16 bits."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            if self.n_pad == [0] * self.B:
                self.n_pad = _pads_from_position_ids(kwargs, key_states.shape[2], self.B)
        B, H, n, D = key_states.shape
        if B != self.B or H != self.H or D != self.D:
            raise ValueError(
                f"update of shape {tuple(key_states.shape)} does not match the cache's (B,H,D)="
                f"{(self.B, self.H, self.D)}"
            )
        if self.read_path == "fused":
            return self._update_fused(key_states, value_states)
        # Quantize what the previous update left pending: it has been attended in 16 bits by now.
        self.flush()
        t0 = self.seq_len
        self.mirror_k = _grow(self.mirror_k, 2, t0 + n)
        self.mirror_v = _grow(self.mirror_v, 2, t0 + n)
        self.mirror_k[:, :, t0 : t0 + n] = key_states
        self.mirror_v[:, :, t0 : t0 + n] = value_states
        self.seq_len = t0 + n
        self._pending = (t0, key_states, value_states)
        return self.mirror_k[:, :, : self.seq_len], self.mirror_v[:, :, : self.seq_len]

    def _update_fused(self, key_states: torch.Tensor, value_states: torch.Tensor):
        """Fused read path: no mirror. Decode and a fresh prefill return the incoming tokens (the
        fused attention reads :meth:`fused_state` at decode); a chunked prefill onto a state returns
        the dequantized state (pad columns zero) followed by the incoming tokens."""
        from fcboost.kernels.state import register_active

        self.flush()
        t0, n = self.seq_len, key_states.shape[2]
        out = key_states, value_states
        if t0 > 0 and n > 1:
            dense_k = key_states.new_zeros(self.B, self.H, t0 + n, self.D)
            dense_v = torch.zeros_like(dense_k)
            for b in range(self.B):
                k, v = self.dequantized(b)  # (H, n_real, D)
                c0 = self._col(b, 0)
                dense_k[b, :, c0 : c0 + k.shape[1]] = k
                dense_v[b, :, c0 : c0 + v.shape[1]] = v
            dense_k[:, :, t0:] = key_states
            dense_v[:, :, t0:] = value_states
            out = dense_k, dense_v
        self.seq_len = t0 + n
        self._pending = (t0, key_states, value_states)
        register_active(self)
        return out

    def fused_state(self):
        """``(PackedKVState, k_new, v_new)`` of a fused decode step: the state before the pending
        token and that token's key/value ``(B, H, D)``."""
        from fcboost.kernels.state import PackedKVState

        if self._pending is None or self._pending[1].shape[2] != 1:
            raise RuntimeError("fused_state() needs a pending single-token (decode) update")
        _, k, v = self._pending
        self._pending = None
        try:
            st = PackedKVState.from_layer(self)
        finally:
            self._pending = (self.seq_len - 1, k, v)
        return st, k[:, :, 0], v[:, :, 0]

    def flush(self) -> None:
        """Apply the timing rules to the tokens of the last update (sink, pages, value window).

        Deferred to the next update (or to a read of the state) so that the tensors returned by
        ``update`` keep the 16-bit view the current step attends with; this is the same as
        quantizing right after attention.
        """
        if self._pending is None:
            return
        t0, key_states, value_states = self._pending
        self._pending = None
        n = key_states.shape[2]
        for b in range(self.B):
            first = max(0, self.n_pad[b] - t0)  # pad columns of this update (first update only)
            if first < n:
                self._append_row(b, key_states[b, :, first:], value_states[b, :, first:])

    def _append_row(self, b: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add real tokens ``k``/``v`` ``(H, m, D)`` of row ``b`` and quantize per the timing rules."""
        c = self.cfg
        m, r = k.shape[1], self.n_real[b]
        s = max(0, min(m, c.n_sink - r))  # tokens that still go to the sink
        if s:
            self.sink_k[b, :, r : r + s] = k[:, :s]
            self.sink_v[b, :, r : r + s] = v[:, :s]
        kr, vr = k[:, s:], v[:, s:]
        if kr.shape[1] == 0:
            self.n_real[b] = r + m
            return
        # keys: buffer then flush whole pages while more than P wait
        nk, np0 = self.n_kbuf(b), self.n_pages(b)
        waiting = torch.cat([self.k_buf[b, :, :nk], kr], dim=1)  # (H, nk + m', D)
        self.n_real[b] = r + m
        n_new_pages = self.n_pages(b) - np0
        if n_new_pages:
            P = c.page_size
            pages = waiting[:, : n_new_pages * P].unflatten(1, (n_new_pages, P))  # (H, n_p, P, D)
            self._write_pages(b, np0, pages)
            waiting = waiting[:, n_new_pages * P :]
        self.k_buf = _grow(self.k_buf, 2, waiting.shape[1])
        self.k_buf[b, :, : waiting.shape[1]] = waiting
        # values: window then quantize the ones that left it
        vq0 = self._n_vq_at(r)
        nw_old = max(0, r - c.n_sink) - vq0
        win = torch.cat([self.v_win[b, :, :nw_old], vr], dim=1)
        n_leave = self.n_vq(b) - vq0
        if n_leave:
            self._write_values(b, vq0, win[:, :n_leave])
            win = win[:, n_leave:]
        self.v_win = _grow(self.v_win, 2, win.shape[1])
        self.v_win[b, :, : win.shape[1]] = win

    def _n_vq_at(self, n_real: int) -> int:
        if self.cfg.passthrough:
            return 0
        return max(0, n_real - self.cfg.n_sink - self.cfg.window)

    def _col(self, b: int, j: int) -> int:
        """Mirror column of real token ``j`` of row ``b``."""
        return self.n_pad[b] + j

    def _triton_flush(self, x: torch.Tensor) -> bool:
        """Fused path on a GPU: quantize on flush with the Triton pack kernels (bitwise equal)."""
        P, D = self.cfg.page_size, self.D
        return (
            self.read_path == "fused"
            and x.is_cuda
            and P & (P - 1) == 0
            and D & (D - 1) == 0
            and self.cfg.key_bits in (2, 4, 8)
            and self.cfg.value_bits in (2, 4, 8)
        )

    def _write_pages(self, b: int, p0: int, pages: torch.Tensor) -> None:
        c, n_p = self.cfg, pages.shape[1]
        if self._triton_flush(pages):
            from fcboost.kernels.quant_pack import pack_keys_into

            for name in ("k_lo", "k_hi", "k_idx", "k_scale", "k_zero"):
                setattr(self, name, _grow(getattr(self, name), 2, p0 + n_p))
            src = (
                pages.flatten(1, 2).unsqueeze(0).expand(self.B, -1, -1, -1)
            )  # (B, H, n_p*P, D), batch stride 0
            P = c.page_size
            pack_keys_into(self, src, [b] * n_p, [i * P for i in range(n_p)], list(range(p0, p0 + n_p)))
            return
        is_boost = self.selector.key_boost(pages)
        pk = quantize_key_pages(pages, c.key_bits, c.boost_bits, is_boost, self.n_boost)
        need = p0 + n_p
        for name in ("k_lo", "k_hi", "k_idx", "k_scale", "k_zero"):
            setattr(self, name, _grow(getattr(self, name), 2, need))
        self.k_lo[b, :, p0:need] = pk.lo
        self.k_scale[b, :, p0:need] = pk.scale
        self.k_zero[b, :, p0:need] = pk.zero
        if pk.hi is not None:
            self.k_hi[b, :, p0:need] = pk.hi
            if self.k_idx is not None:
                self.k_idx[b, :, p0:need] = pk.idx.to(torch.int16)
        deq = dequantize_key_pages(pk, c.page_size, c.key_bits, c.boost_bits).flatten(1, 2)  # (H, n_p*P, D)
        c0 = self._col(b, c.n_sink + p0 * c.page_size)
        if self.read_path == "reference":
            self.mirror_k[b, :, c0 : c0 + deq.shape[1]] = deq.to(self.dtype)

    def _write_values(self, b: int, j0: int, vals: torch.Tensor) -> None:
        c, n = self.cfg, vals.shape[1]
        if self._triton_flush(vals):
            from fcboost.kernels.quant_pack import pack_values_into

            self._grow_values(j0 + n)
            src = vals.unsqueeze(0).expand(self.B, -1, -1, -1)  # (B, H, n, D), batch stride 0
            pack_values_into(self, src, [b], [0], [j0], [n], max_count=n)
            return
        is_boost = self.selector.value_boost()
        if is_boost is not None:
            is_boost = is_boost.to(vals.device)
        nb = self.n_boost if is_boost is not None else 0
        pv = quantize_values(vals, c.value_bits, c.boost_bits, is_boost, nb)
        self._grow_values(j0 + n)
        write_tokens(self.v_lo[b], j0, pv.lo)
        self.v_scale[b, :, j0 : j0 + n] = pv.scale
        self.v_zero[b, :, j0 : j0 + n] = pv.zero
        if pv.hi is not None:
            write_tokens(self.v_hi[b], j0, pv.hi)
        deq = dequantize_values(pv, self.D, c.value_bits, c.boost_bits, self._value_idx())
        c0 = self._col(b, c.n_sink + j0)
        if self.read_path == "reference":
            self.mirror_v[b, :, c0 : c0 + n] = deq.to(self.dtype)

    def _grow_values(self, need: int) -> None:
        """Value capacity for ``need`` tokens, in whole 64-token steps (scales token-major)."""
        for name in ("v_lo", "v_hi"):
            setattr(self, name, _grow(getattr(self, name), 2, steps(need)))
        for name in ("v_scale", "v_zero"):
            setattr(self, name, _grow(getattr(self, name), 2, steps(need) * STEP, STEP))

    def _value_idx(self) -> torch.Tensor | None:
        return self.boost_idx.long() if self._value_boost else None  # (H, nb)

    # -------------------------------------------------------------------- reading state
    def packed_keys(self, b: int) -> PackedKeys:
        """Row ``b``'s quantized key pages (leading dims ``(H, n_pages)``)."""
        self.flush()
        n = self.n_pages(b)
        idx = None
        if self.k_hi is not None:
            idx = (
                self.k_idx[b, :, :n]
                if self.k_idx is not None
                else self.boost_idx.unsqueeze(1).expand(self.H, n, -1)
            ).long()
        return PackedKeys(
            self.k_lo[b, :, :n],
            None if self.k_hi is None else self.k_hi[b, :, :n],
            idx,
            self.k_scale[b, :, :n],
            self.k_zero[b, :, :n],
        )

    def dequantized(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ``b``'s real tokens as attention sees them, ``(H, n_real, D)`` each, rebuilt from the packed state."""
        from fcboost.quant.mixed import PackedValues

        self.flush()
        c = self.cfg
        ns, npg, nvq = self.n_sink(b), self.n_pages(b), self.n_vq(b)
        ks = [self.sink_k[b, :, :ns].float()]
        vs = [self.sink_v[b, :, :ns].float()]
        if npg:
            ks.append(
                dequantize_key_pages(self.packed_keys(b), c.page_size, c.key_bits, c.boost_bits).flatten(1, 2)
            )
        ks.append(self.k_buf[b, :, : self.n_kbuf(b)].float())
        if nvq:
            pv = PackedValues(
                to_tokens(self.v_lo[b], nvq),
                None if self.v_hi is None else to_tokens(self.v_hi[b], nvq),
                self.v_scale[b, :, :nvq],
                self.v_zero[b, :, :nvq],
            )
            vs.append(dequantize_values(pv, self.D, c.value_bits, c.boost_bits, self._value_idx()))
        vs.append(self.v_win[b, :, : self.n_vwin(b)].float())
        return torch.cat(ks, 1).to(self.dtype), torch.cat(vs, 1).to(self.dtype)

    def nbytes(self) -> int:
        """Bytes of the packed state that holds this layer's real tokens (no capacity slack, no mirror)."""
        if not self.is_initialized:
            return 0
        self.flush()
        H, D = self.H, self.D
        el = self.sink_k.element_size()
        total = 0
        for b in range(self.B):
            total += 2 * self.n_sink(b) * H * D * el  # sink K and V
            total += (self.n_kbuf(b) + self.n_vwin(b)) * H * D * el
            npg, nvq = self.n_pages(b), self.n_vq(b)
            for t in (self.k_lo, self.k_hi, self.k_idx, self.k_scale, self.k_zero):
                if t is not None:
                    total += npg * _entry_numel(t) * t.element_size()
            for t in (self.v_scale, self.v_zero):
                if t is not None:
                    total += nvq * _entry_numel(t) * t.element_size()
            for t in (self.v_lo, self.v_hi):  # an entry: a 64-token step
                if t is not None:
                    total += nvq * _entry_numel(t) // STEP * t.element_size()
        if self.boost_idx is not None:
            total += self.boost_idx.numel() * self.boost_idx.element_size()
        return total

    # ----------------------------------------------------------------- Cache protocol
    def get_seq_length(self) -> int:
        return self.seq_len

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seq_len + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.is_initialized = False
        self.seq_len = 0
        self.n_real = []
        self._pending = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError(
            "beam search is not supported by the quantized cache (use sampling or greedy)"
        )


def _entry_numel(t: torch.Tensor) -> int:
    """Elements of one page/token entry of a ``(B, H, N, ...)`` storage tensor, for all heads."""
    n = t.shape[1]
    for s in t.shape[3:]:
        n *= s
    return n


def _hi_storage(bits: int, boost_bits: int) -> int:
    from fcboost.quant.core import storage_bits

    return storage_bits(boost_bits - bits)


def _pads_from_position_ids(kwargs: dict, n: int, B: int) -> list[int]:
    """Left-pad counts inferred from the ``position_ids`` HF passes with a left-padded prefill.

    ``generate`` gives pad columns position 0 and real tokens 0..m-1, so the last column of row b
    has position ``m_b - 1`` and the row has ``n - m_b`` pads.
    """
    inner = kwargs.get("kwargs", kwargs)
    pos = inner.get("position_ids") if isinstance(inner, dict) else None
    if pos is None or pos.ndim != 2 or pos.shape[-1] != n:
        return [0] * B
    pos = pos.expand(B, n) if pos.shape[0] == 1 else pos
    last = pos[:, -1].tolist()
    return [max(0, n - 1 - int(p)) for p in last]
