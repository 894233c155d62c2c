"""lm-eval model ``fcboost``: Hugging Face generation with a fresh ``QuantizedKVCache`` per call.

Programmatic (the pipeline)::

    lm = FCBoostLM(pretrained=model, tokenizer=tok, quant_config=KVQuantConfig.kitty(), batch_size=1)
    lm_eval.simple_evaluate(model=lm, tasks=[...])

lm-eval's command line (the registration runs when this module is imported; lm-eval 0.4.13 does not
discover plugins by entry point, see ``fcboost.eval.lm_eval_cli`` and the task YAMLs, which import it)::

    lm_eval --model fcboost --model_args pretrained=smollm2-135m,method=kitty \\
        --tasks fcboost/eval/tasks/gsm8k_cot.yaml --limit 20

Only ``generate_until`` requests go through the quantized cache (the paper's tasks are generation
tasks); log-likelihood requests run the plain model.
"""

from __future__ import annotations

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from fcboost.masks.mask import ChannelMask
from fcboost.quant.config import KVQuantConfig

PRESETS = {
    "fp16": KVQuantConfig.fp16,
    "kivi": KVQuantConfig.kivi,
    "kitty": KVQuantConfig.kitty,
    "fcboost": KVQuantConfig.fcboost,
    "static": KVQuantConfig.static,
}


def quant_config_from(method: str | KVQuantConfig, **overrides) -> KVQuantConfig:
    """A ``KVQuantConfig`` from a preset name (``PRESETS``) or a config, with field overrides."""
    if isinstance(method, KVQuantConfig):
        return method.replace(**overrides) if overrides else method
    if method not in PRESETS:
        raise ValueError(
            f"method={method!r} is unknown; expected one of {sorted(PRESETS)} or a KVQuantConfig"
        )
    base = PRESETS[method]()
    return base.replace(**overrides) if overrides else base


def load_pretrained(pretrained: str, tokenizer: str | None, dtype: str, device: str, seed: int = 0):
    """(model, tokenizer, fingerprint) from a ``fcboost.models.load`` spec; random models get ``tokenizer``."""
    from fcboost.eval.tokenizer import load_tokenizer
    from fcboost.models import RANDOM_CONFIGS, load, random_model

    if pretrained.startswith("random:"):
        if tokenizer is None:
            raise ValueError(
                f"pretrained={pretrained!r} has no tokenizer; pass tokenizer=byte (or a path/hub id)"
            )
        tok = load_tokenizer(tokenizer)
        name = pretrained.removeprefix("random:")
        vocab = max(RANDOM_CONFIGS.get(name, {}).get("vocab_size", 0), len(tok))
        loaded = random_model(name, dtype=getattr(torch, dtype), device=device, seed=seed, vocab_size=vocab)
        loaded.tokenizer = tok
        loaded.fingerprint["tokenizer"] = tokenizer
        loaded.fingerprint["vocab_size"] = vocab
        return loaded
    loaded = load(pretrained, dtype=dtype, device=device, seed=seed)
    if tokenizer is not None:
        loaded.tokenizer = load_tokenizer(tokenizer)
    return loaded


@register_model("fcboost")
class FCBoostLM(HFLM):
    """``HFLM`` whose generation uses ``QuantizedKVCache(model.config, quant_config, mask=mask)``.

    Args:
        pretrained: an instantiated HF causal LM, or a ``fcboost.models.load`` spec (hub id, local dir,
            GGUF file, ``smollm2-135m``, ``random:<name>``).
        method: a preset name of ``PRESETS`` (command line) when ``quant_config`` is not given.
        quant_config: the ``KVQuantConfig`` (takes precedence over ``method``).
        mask: a ``ChannelMask`` or the path of a saved one (static selectors need it).
        n_boost: Kitty's channels per page (overrides the preset).
        tokenizer: a tokenizer object, or a spec (``byte``, a path or hub id) for string ``pretrained``.
        dtype, device: for string ``pretrained``.
    """

    def __init__(
        self,
        pretrained,
        method: str = "kivi",
        quant_config: KVQuantConfig | None = None,
        mask: ChannelMask | str | None = None,
        n_boost: int | None = None,
        tokenizer=None,
        dtype: str = "float32",
        device: str | None = None,
        seed: int = 0,
        **kwargs,
    ):
        if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if isinstance(pretrained, str):
            tok_spec = tokenizer if isinstance(tokenizer, str) else None
            loaded = load_pretrained(pretrained, tok_spec, dtype, device, seed)
            pretrained = loaded.model
            tokenizer = loaded.tokenizer if tokenizer is None or tok_spec is not None else tokenizer
        overrides = {"n_boost": n_boost} if n_boost is not None else {}
        self.quant_config = quant_config_from(quant_config or method, **overrides)
        self.mask = ChannelMask.load(mask) if isinstance(mask, str) else mask
        if self.quant_config.selector == "static" and self.mask is None:
            raise ValueError(
                f"method={method!r} uses a static channel mask: pass mask=<path of a ChannelMask>"
            )
        self.cache_bytes: int | None = None
        self.n_generate_calls = 0
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, device=device, **kwargs)

    def _new_cache(self, attention_mask: torch.Tensor | None):
        from fcboost.cache import QuantizedKVCache

        return QuantizedKVCache(
            self.model.config, self.quant_config, mask=self.mask, attention_mask=attention_mask
        )

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs):
        """``context`` ``(B, T)`` left-padded prompt ids -> ``(B, T + new)`` ids, through a fresh cache."""
        cache = self._new_cache(generation_kwargs.get("attention_mask"))
        out = super()._model_generate(context, max_length, stop, past_key_values=cache, **generation_kwargs)
        self.n_generate_calls += 1
        self.cache_bytes = max(self.cache_bytes or 0, cache.nbytes())
        return out
