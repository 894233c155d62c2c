"""Graph-captured decoding over the preallocated caches of :mod:`fcboost.cache.static`.

``FastDecoder`` holds the model, a :class:`StaticKVCache` for ``(batch, max_len)`` and static
device tensors (input ids ``(B, 1)``, position ids ``(B, 1)``, step ``(1,)``, output tokens
``(B, N)``). One decode step = HF model forward for one token per row (attention through
``fcboost_static``: :meth:`StaticQuantLayer.decode` = fused decode attention + append + in-place
flush) + greedy pick, all on the device; it is captured once in a ``torch.cuda.CUDAGraph`` and
replayed. The mask function registered for ``fcboost_static`` returns None: the kernels use the
per-row device lengths, so nothing in HF's mask creation depends on python-side lengths.

Prefill runs host-side, one row at a time over its real tokens, in chunks of ``prefill_chunk``:
SDPA over the dequantized earlier state plus the 16-bit chunk (causal inside the chunk).

Example::

    tokens = generate_fast(model, input_ids, attention_mask, KVQuantConfig.kivi(), max_new_tokens=256)
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from fcboost.cache.static import StaticKVCache, active_static_layer
from fcboost.quant.config import KVQuantConfig

NAME = "fcboost_static"


def fcboost_static(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query (B, Hq, Lq, D), key/value from the static cache -> (out (B, Lq, Hq, D), None)."""
    layer = active_static_layer(getattr(module, "layer_idx", -1))
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if layer is not None and layer.mode == "decode":
        out = layer.decode(query[:, :, 0], key[:, :, 0], value[:, :, 0], scale)  # (B, Hq, D)
        return out[:, None], None
    Lq, T = query.shape[2], key.shape[2]
    mask = None
    if T > Lq:  # chunk after earlier tokens: all of them, causal inside the chunk
        i = torch.arange(Lq, device=query.device)
        mask = (torch.arange(T, device=query.device)[None, :] <= (T - Lq + i)[:, None])[None, None]
    kwargs.pop("is_causal", None)
    return sdpa_attention_forward(
        module,
        query,
        key,
        value,
        mask,
        dropout=0.0,
        scaling=scale,
        is_causal=mask is None and Lq > 1,
        **kwargs,
    )


def _no_mask(*args, **kwargs):
    return None


AttentionInterface.register(NAME, fcboost_static)
AttentionMaskInterface.register(NAME, _no_mask)


class FastDecoder:
    """Preallocated cache + static buffers + the captured decode step (see module docstring).

    Args:
        model: an HF causal LM (RoPE, full attention) on its device.
        quant_config: a 2-bit :class:`KVQuantConfig`, or None for a 16-bit static cache.
        mask: the :class:`ChannelMask` of ``selector="static"``.
        batch, max_len: rows and tokens per row (prompt + generated) the cache holds.
        prefill_chunk: tokens per prefill forward.
        use_graph: capture the step in a CUDA graph (CUDA only; else eager).
        record_logits: keep every step's logits ``(B, N, V)`` fp32 (tests).
    """

    def __init__(
        self,
        model,
        quant_config: KVQuantConfig | None,
        mask=None,
        *,
        batch: int,
        max_len: int,
        max_new_tokens: int,
        prefill_chunk: int = 8192,
        use_graph: bool = True,
        record_logits: bool = False,
    ):
        if prefill_chunk < 1 or max_new_tokens < 1:
            raise ValueError(
                f"prefill_chunk={prefill_chunk} and max_new_tokens={max_new_tokens} must be >= 1"
            )
        p = next(model.parameters())
        self.model, self.device, self.B, self.N = model, p.device, batch, max_new_tokens
        self.cache = StaticKVCache(
            model.config, quant_config, mask, max_batch=batch, max_len=max_len, dtype=p.dtype, device=p.device
        )
        self.prev_attn = model.config._attn_implementation
        model.set_attn_implementation(NAME)
        self.chunk = prefill_chunk
        self.use_graph = use_graph and self.device.type == "cuda"
        dev = self.device
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self.step_i = torch.zeros(1, dtype=torch.long, device=dev)
        self.tokens = torch.zeros(batch, max_new_tokens, dtype=torch.long, device=dev)
        self.forced = torch.zeros(batch, max_new_tokens + 1, dtype=torch.long, device=dev)
        self.use_forced = torch.zeros(1, dtype=torch.bool, device=dev)
        V = model.config.vocab_size
        self.logits = torch.zeros(batch, max_new_tokens, V, device=dev) if record_logits else None
        self.graph = None
        self.n_done = 0
        self.graph_error: str | None = None

    # ------------------------------------------------------------------------- prefill
    @torch.no_grad()
    def prefill(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        rows: list[int] | None = None,
    ) -> torch.Tensor:
        """Prefill ``input_ids`` ``(B, T)`` (padding where ``attention_mask`` is 0 is dropped) and
        return the first generated tokens ``(B,)``; stores them as ``tokens[:, 0]``."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, seq); got {tuple(input_ids.shape)}")
        rows = list(range(input_ids.shape[0])) if rows is None else rows
        if len(rows) != input_ids.shape[0] or max(rows) >= self.B:
            raise ValueError(f"{input_ids.shape[0]} prompts for rows {rows} of a cache of batch {self.B}")
        first = torch.zeros(len(rows), dtype=torch.long, device=self.device)
        for i, b in enumerate(rows):
            ids = input_ids[i] if attention_mask is None else input_ids[i][attention_mask[i].bool()]
            ids = ids.to(self.device)
            if ids.numel() == 0:
                raise ValueError(f"prompt {i} has no real tokens")
            for t0 in range(0, ids.numel(), self.chunk):
                part = ids[t0 : t0 + self.chunk][None]  # (1, c)
                self.cache.set_mode("prefill", b)
                pos = torch.arange(t0, t0 + part.shape[1], device=self.device)[None]
                out = self.model(
                    input_ids=part,
                    position_ids=pos,
                    past_key_values=self.cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
            first[i] = out.logits[0, -1].argmax(-1)
            self.pos[b, 0] = ids.numel()
        self.ids[rows, 0] = first
        self.tokens[rows, 0] = first
        self.step_i.fill_(1)
        self.n_done = 1
        return first

    def replicate(self, src: int = 0) -> None:
        """Make every row a copy of row ``src`` (benchmarks: decode cost of B prompts of one length)."""
        self.cache.copy_row(src, slice(None))
        for t in (self.ids, self.pos, self.tokens):
            t[:] = t[src : src + 1]

    # -------------------------------------------------------------------------- decode
    def _step(self) -> None:
        self.cache.set_mode("decode")
        out = self.model(
            input_ids=self.ids,
            position_ids=self.pos,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1]  # (B, V)
        nxt = logits.argmax(-1)  # (B,)
        idx = self.step_i.clamp(max=self.N - 1)
        self.tokens.index_copy_(1, idx, nxt[:, None])
        if self.logits is not None:
            self.logits.index_copy_(1, idx, logits.float()[:, None])
        feed = torch.where(self.use_forced, self.forced.index_select(1, idx)[:, 0], nxt)
        self.ids.copy_(feed[:, None])
        self.pos.add_(1)
        self.step_i.add_(1)

    @torch.no_grad()
    def decode(self, n: int | None = None) -> torch.Tensor:
        """Run ``n`` decode steps (default: up to ``max_new_tokens``); returns ``tokens`` ``(B, N)``."""
        n = self.N - self.n_done if n is None else n
        if self.n_done + n > self.N:
            raise ValueError(f"{n} more steps exceed max_new_tokens={self.N} ({self.n_done} done)")
        for _ in range(n):
            if self.graph is not None:
                self.graph.replay()
            elif self.use_graph and self.graph_error is None and self.n_done >= 2:
                self._capture()
                self.graph.replay() if self.graph is not None else self._step()
            elif self.use_graph and self.graph_error is None:
                s = torch.cuda.Stream()  # warm-up step (a real one) off the capture stream
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    self._step()
                torch.cuda.current_stream().wait_stream(s)
            else:
                self._step()
            self.n_done += 1
        return self.tokens

    def _capture(self) -> None:
        g = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(g):
                self._step()
            self.graph = g
        except Exception as e:  # pragma: no cover - GPU only
            self.graph_error = f"{type(e).__name__}: {e}"
            torch.cuda.synchronize()

    def close(self) -> None:
        """Restore the model's attention implementation."""
        self.model.set_attn_implementation(self.prev_attn)


@torch.no_grad()
def generate_fast(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    quant_config: KVQuantConfig | None = None,
    mask=None,
    max_new_tokens: int = 256,
    greedy: bool = True,
    prefill_chunk: int = 8192,
    use_graph: bool = True,
) -> torch.Tensor:
    """Greedy generation with the graph-captured static cache; returns new tokens ``(B, max_new_tokens)``.

    input_ids/attention_mask: ``(B, T)`` (left or right padding, zeros dropped per row).
    quant_config None means a 16-bit static cache. No EOS stopping (fixed-length decoding).
    """
    if not greedy:
        raise ValueError("generate_fast decodes greedily only (greedy=True)")
    B = input_ids.shape[0]
    lens = input_ids.shape[1] if attention_mask is None else int(attention_mask.sum(-1).max())
    dec = FastDecoder(
        model,
        quant_config,
        mask,
        batch=B,
        max_len=lens + max_new_tokens,
        max_new_tokens=max_new_tokens,
        prefill_chunk=prefill_chunk,
        use_graph=use_graph,
    )
    try:
        dec.prefill(input_ids, attention_mask)
        return dec.decode().clone()
    finally:
        dec.close()
