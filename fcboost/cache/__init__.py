"""The quantized HF cache: per-layer packed state, timing rules and read paths."""

from fcboost.cache.cache import QuantizedKVCache
from fcboost.cache.layer import QuantizedLayer

__all__ = ["QuantizedKVCache", "QuantizedLayer"]
