"""A method config (``conf/method/*.yaml``) -> ``KVQuantConfig`` + optional ``ChannelMask``.

One function per concern, no per-method branches: the quantizer is ``KVQuantConfig(**method.quant)``;
the mask comes from ``method.mask.source`` (``none``, ``profile``, ``random``, ``file``).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from fcboost.masks.mask import ChannelMask
from fcboost.quant.config import KVQuantConfig

MASK_SOURCES = ("none", "profile", "random", "file")


def _plain(node: Any) -> dict:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def build_quant_config(method) -> KVQuantConfig:
    """``KVQuantConfig`` from ``method.quant`` (its fields are exactly KVQuantConfig's)."""
    quant = _plain(method["quant"])
    known = {f.name for f in fields(KVQuantConfig)}
    unknown = sorted(set(quant) - known)
    if unknown:
        raise ValueError(f"method.quant has unknown fields {unknown}; expected a subset of {sorted(known)}")
    return KVQuantConfig(**quant)


def mask_spec(method):
    """``MaskSpec`` of a ``profile`` mask source (unset fields keep MaskSpec's defaults)."""
    from fcboost.masks.profile import MaskSpec

    prof = {k: v for k, v in _plain(method["mask"]["profile"]).items() if v is not None}
    return MaskSpec(**prof)


def build_mask(method, loaded, mask_dir: str, quant: KVQuantConfig) -> ChannelMask | None:
    """The method's ``ChannelMask`` (``None`` for non-static selectors); profiled masks are cached in ``mask_dir``."""
    mask_cfg = method["mask"]
    source = mask_cfg["source"]
    if source not in MASK_SOURCES:
        raise ValueError(f"method.mask.source={source!r} is unknown; expected one of {MASK_SOURCES}")
    if (quant.selector == "static") != (source != "none"):
        raise ValueError(
            f"method {method['name']!r}: selector={quant.selector!r} with mask.source={source!r}; a static selector "
            "needs a mask source (profile/random/file) and other selectors take none"
        )
    if source == "none":
        return None
    if source == "file":
        if not mask_cfg["path"]:
            raise ValueError(f"method {method['name']!r}: mask.source=file needs mask.path")
        mask = ChannelMask.load(mask_cfg["path"])
    elif source == "random":
        mask = ChannelMask.random(
            loaded.model.config, int(mask_cfg["n_pairs"]), int(mask_cfg["seed"]), mask_cfg["pair_layout"]
        )
    else:
        from fcboost.masks.profile import get_or_build_mask

        mask = get_or_build_mask(mask_dir, loaded, mask_spec(method))
    from fcboost.models import attention_shape

    shape = attention_shape(loaded.model.config)
    mask.check_compatible(shape.n_layers, shape.n_kv_heads, shape.head_dim)
    return mask


def variant(method, quant: KVQuantConfig, mask: ChannelMask | None) -> dict:
    """The record's ``variant``: what distinguishes runs of one method name."""
    mask_cfg = method["mask"]
    source = mask_cfg["source"]
    n_boost = mask.n_channels if mask is not None else quant.n_boost
    return {
        "pair_layout": mask.pair_layout if mask is not None else None,
        "boost_values": bool(quant.boost_values),
        "n_boost": int(n_boost),
        "n_pairs": int(mask.n_pairs or mask.n_channels // 2) if mask is not None else None,
        "mask_seed": int(mask_cfg["seed"]) if source == "random" else None,
    }
