"""`PackedKVState`: one layer's packed KV storage plus per-row counts, as the fused kernels read it.

Field shapes are those of :mod:`fcboost.cache.layer` (B rows, H KV heads, head_dim D). Counts are
int32 ``(B,)`` device tensors: ``n_real`` real tokens (sink + keys, including the newest token),
``n_pages`` key pages stored, ``n_vq`` quantized values stored. Row b's keys are
``sink[:min(n_real, S)] | pages[:n_pages] | k_buf[:n_real - ns - n_pages*P]`` and its values
``sink | v_q[:n_vq] | v_win[:n_real - ns - n_vq]``; the two 16-bit boundaries differ.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from fcboost.quant.config import KVQuantConfig
from fcboost.quant.layout import STEP, steps, to_tokens
from fcboost.quant.mixed import PackedKeys, PackedValues, dequantize_key_pages, dequantize_values


@dataclass
class PackedKVState:
    """Views of a layer's storage (no copies) and its per-row counts; see the module docstring."""

    cfg: KVQuantConfig
    sink_k: torch.Tensor  # (B, H, S, D)
    sink_v: torch.Tensor  # (B, H, S, D)
    k_buf: torch.Tensor  # (B, H, >=P+1, D)
    v_win: torch.Tensor  # (B, H, >=W+1, D)
    k_lo: torch.Tensor  # (B, H, NP, P*b/8, D) uint8
    k_scale: torch.Tensor  # (B, H, NP, D) fp16
    k_zero: torch.Tensor  # (B, H, NP, D) fp16
    v_lo: torch.Tensor  # (B, H, NV/64, 4, D*b/8, 16) uint8, interleaved (fcboost.quant.layout)
    v_scale: torch.Tensor  # (B, H, NV, G) fp16
    v_zero: torch.Tensor  # (B, H, NV, G) fp16
    n_real: torch.Tensor  # (B,) int32
    n_pages: torch.Tensor  # (B,) int32
    n_vq: torch.Tensor  # (B,) int32
    k_hi: torch.Tensor | None = None  # (B, H, NP, P*h/8, nb) uint8
    k_idx: torch.Tensor | None = None  # (B, H, NP, nb) int16, Kitty's per-page channels
    boost_idx: torch.Tensor | None = None  # (H, nb) int16, a static mask's channels
    v_hi: torch.Tensor | None = None  # (B, H, NV/64, 4, ceil(nb*h/8), 16) uint8, interleaved

    @property
    def n_boost(self) -> int:
        return 0 if self.k_hi is None else self.k_hi.shape[-1]

    @classmethod
    def from_layer(cls, layer) -> PackedKVState:
        """Views of a :class:`fcboost.cache.layer.QuantizedLayer`'s storage with its current counts."""
        B, dev = layer.B, layer.device

        def i32(f):
            return torch.tensor([f(b) for b in range(B)], dtype=torch.int32, device=dev)

        return cls(
            layer.cfg,
            layer.sink_k,
            layer.sink_v,
            layer.k_buf,
            layer.v_win,
            layer.k_lo,
            layer.k_scale,
            layer.k_zero,
            layer.v_lo,
            layer.v_scale,
            layer.v_zero,
            i32(lambda b: layer.n_real[b]),
            i32(layer.n_pages),
            i32(layer.n_vq),
            layer.k_hi,
            layer.k_idx,
            layer.boost_idx,
            layer.v_hi,
        )

    def nbytes_read(self) -> int:
        """Bytes the fused kernel must read for the rows' real tokens (packed planes, scales, 16-bit parts)."""
        c, (_, H, _, D) = self.cfg, self.sink_k.shape
        el = self.sink_k.element_size()
        n, npg, nvq = self.n_real.long(), self.n_pages.long(), self.n_vq.long()
        ns = n.clamp(max=c.n_sink)
        total = int((2 * ns + (n - ns - npg * c.page_size) + (n - ns - nvq)).sum()) * H * D * el

        def per(t, tokens=1):
            return 0 if t is None else t[0, 0, 0].numel() * t.element_size() * H // tokens

        for t in (self.k_lo, self.k_hi, self.k_idx, self.k_scale, self.k_zero):
            total += int(npg.sum()) * per(t)
        for t in (self.v_scale, self.v_zero):
            total += int(nvq.sum()) * per(t)
        for t in (self.v_lo, self.v_hi):  # a step entry holds 64 tokens
            total += int(nvq.sum()) * per(t, STEP)
        return total

    def check(self) -> None:
        """Raise if the configuration or the storage is one the fused kernels do not serve."""
        c = self.cfg
        if (c.key_bits, c.value_bits) != (2, 2) or (self.n_boost and c.boost_bits != 4):
            raise ValueError(
                f"the fused kernels serve 2-bit keys/values with a 4-bit boost; got key_bits="
                f"{c.key_bits}, value_bits={c.value_bits}, boost_bits={c.boost_bits}"
            )
        D = self.sink_k.shape[-1]
        if D not in (32, 64, 128, 256):
            raise ValueError(
                f"head_dim={D} is not supported by the fused kernel (expected 32, 64, 128 or 256)"
            )
        if self.k_hi is not None and self.k_idx is None and self.boost_idx is None:
            raise ValueError("a boosted state needs k_idx (Kitty) or boost_idx (static mask)")
        for name in ("n_real", "n_pages", "n_vq"):
            t = getattr(self, name)
            if t.dtype != torch.int32 or t.shape != (self.sink_k.shape[0],):
                raise ValueError(f"{name} must be int32 (B,); got {t.dtype} {tuple(t.shape)}")

    def dequantized(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ``b``'s keys and values ``(H, n_real, D)`` in the model dtype (the reference's view)."""
        c, D = self.cfg, self.sink_k.shape[-1]
        n, npg, nvq = int(self.n_real[b]), int(self.n_pages[b]), int(self.n_vq[b])
        ns = min(n, c.n_sink)
        ks, vs = [self.sink_k[b, :, :ns].float()], [self.sink_v[b, :, :ns].float()]
        if npg:
            idx = None
            if self.k_hi is not None:
                idx = (
                    self.k_idx[b, :, :npg]
                    if self.k_idx is not None
                    else self.boost_idx.unsqueeze(1).expand(-1, npg, -1)
                )
                idx = idx.long()
            pk = PackedKeys(
                self.k_lo[b, :, :npg],
                None if self.k_hi is None else self.k_hi[b, :, :npg],
                idx,
                self.k_scale[b, :, :npg],
                self.k_zero[b, :, :npg],
            )
            ks.append(
                dequantize_key_pages(pk, c.page_size, c.key_bits, c.boost_bits).flatten(1, 2)
            )  # (H, npg*P, D)
        ks.append(self.k_buf[b, :, : n - ns - npg * c.page_size].float())
        if nvq:
            pv = PackedValues(
                to_tokens(self.v_lo[b], nvq),
                None if self.v_hi is None else to_tokens(self.v_hi[b], nvq),
                self.v_scale[b, :, :nvq],
                self.v_zero[b, :, :nvq],
            )
            vidx = self.boost_idx.long() if self.v_hi is not None else None
            vs.append(dequantize_values(pv, D, c.value_bits, c.boost_bits, vidx))
        vs.append(self.v_win[b, :, : n - ns - nvq].float())
        dt = self.sink_k.dtype
        return torch.cat(ks, 1).to(dt), torch.cat(vs, 1).to(dt)


def random_state(
    cfg: KVQuantConfig,
    lengths: list[int],
    n_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
    pending: bool = False,
    seed: int = 0,
) -> PackedKVState:
    """A valid random packed state (random codes, positive scales) for tests and benchmarks.

    ``lengths``: real tokens per row. ``pending=True`` leaves the newest token's flush undone
    (up to P+1 keys in the buffer, W+1 values in the window), the fused read path's state.
    """
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(seed)
    B, H, D = len(lengths), n_kv_heads, head_dim
    S, P, W = cfg.n_sink, cfg.page_size, cfg.window
    nb = cfg.n_boost

    def pages(n):
        return max(0, (n - S - 1) // P)

    def vq(n):
        return max(0, n - S - W)

    done = [max(0, n - 1) if pending else n for n in lengths]
    npg, nvq = [pages(n) for n in done], [vq(n) for n in done]
    NP, NV = max(npg + [1]), steps(max(nvq + [1])) * STEP  # value capacity in whole steps, as the cache

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)

    def u8(*shape):
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8, device=device)

    def pos16(*shape):
        return (torch.rand(*shape, generator=g, device=device) * 0.5 + 0.05).to(torch.float16)

    mk = dict(
        sink_k=rnd(B, H, S, D),
        sink_v=rnd(B, H, S, D),
        k_buf=rnd(B, H, P + 2, D),
        v_win=rnd(B, H, W + 2, D),
        k_lo=u8(B, H, NP, P // 4, D),
        k_scale=pos16(B, H, NP, D),
        k_zero=(-pos16(B, H, NP, D) * 4),
    )
    boost = cfg.selector != "none" and nb > 0
    vboost = boost and cfg.boost_values
    G = 2 if vboost else 1
    mk.update(
        v_lo=u8(B, H, NV // STEP, 4, D // 4, 16), v_scale=pos16(B, H, NV, G), v_zero=-pos16(B, H, NV, G) * 4
    )
    i32 = dict(dtype=torch.int32, device=device)
    st = PackedKVState(
        cfg,
        **mk,
        n_real=torch.tensor(lengths, **i32),
        n_pages=torch.tensor(npg, **i32),
        n_vq=torch.tensor(nvq, **i32),
    )
    if boost:
        st.k_hi = u8(B, H, NP, P // 4, nb)
        if cfg.selector == "dynamic_magnitude":
            st.k_idx = (
                torch.rand(B, H, NP, D, generator=g, device=device)
                .argsort(-1)[..., :nb]
                .sort(-1)
                .values.to(torch.int16)
                .to(device)
            )
        else:
            st.boost_idx = (
                torch.rand(H, D, generator=g, device=device)
                .argsort(-1)[:, :nb]
                .sort(-1)
                .values.to(torch.int16)
                .to(device)
            )
        if vboost:
            st.v_hi = u8(B, H, NV // STEP, 4, -(-nb * 2 // 8), 16)
    return st


# Layers of the cache updated last, by layer index: the attention function receives the module
# (with ``layer_idx``) but not the cache, and runs right after that layer's update.
_ACTIVE: dict[int, weakref.ref] = {}


def register_active(layer) -> None:
    """Record ``layer`` (a fused-path QuantizedLayer) as the one attention reads for its index."""
    _ACTIVE[layer.layer_idx] = weakref.ref(layer)


def active_layer(layer_idx: int):
    """The fused-path layer last updated at ``layer_idx``, or None."""
    ref = _ACTIVE.get(layer_idx)
    return None if ref is None else ref()
