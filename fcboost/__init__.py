"""fcboost: 2-bit KV-cache quantization with static (CA) and dynamic channel boost.

Public API::

    from fcboost import KVQuantConfig, QuantizedKVCache, ChannelMask, profile_ca
"""

from fcboost.masks.mask import ChannelMask
from fcboost.quant.config import KVQuantConfig

__version__ = "0.1.0"
__all__ = ["ChannelMask", "KVQuantConfig", "QuantizedKVCache", "profile_ca", "__version__"]


def __getattr__(name: str):
    # Imported lazily so `import fcboost` stays light (no transformers import until needed).
    if name == "QuantizedKVCache":
        from fcboost.cache import QuantizedKVCache

        return QuantizedKVCache
    if name == "profile_ca":
        from fcboost.masks.profile import profile_ca

        return profile_ca
    raise AttributeError(f"module 'fcboost' has no attribute {name!r}")
