"""`KVQuantConfig`: a quantization method is data (a frozen dataclass), presets are constructors."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from fcboost.quant.core import storage_bits

SELECTORS = ("none", "dynamic_magnitude", "static")
VALID_BITS = (2, 4, 8, 16)


@dataclass(frozen=True)
class KVQuantConfig:
    """Parameters of a KIVI-style 2-bit KV cache with optional channel boost (REFERENCE.md §1).

    Attributes:
        key_bits, value_bits: base bit-widths; 16 means stored unquantized (passthrough).
        boost_bits: bit-width of boosted channels (keys; values too when ``boost_values``).
        page_size: P, tokens per key page (per-channel statistics run over a page).
        n_sink: S, first tokens of every sequence kept in 16 bits.
        window: W, most recent values kept in 16 bits.
        selector: ``"none"`` (KIVI-KV2*), ``"dynamic_magnitude"`` (Kitty: per page top-``n_boost``
            channels by mean |k|) or ``"static"`` (a ``ChannelMask``: FCBoost, random, magnitude...).
        n_boost: channels boosted per page for ``dynamic_magnitude`` (static masks carry their own).
        boost_values: boost the mask's channels in the value cache too (static selector only).
    """

    key_bits: int = 2
    value_bits: int = 2
    boost_bits: int = 4
    page_size: int = 128
    n_sink: int = 32
    window: int = 128
    selector: str = "none"
    n_boost: int = 0
    boost_values: bool = False

    def __post_init__(self) -> None:
        for name in ("key_bits", "value_bits", "boost_bits"):
            v = getattr(self, name)
            if v not in VALID_BITS:
                raise ValueError(f"{name}={v!r} is not supported; expected one of {VALID_BITS}")
        if self.selector not in SELECTORS:
            raise ValueError(f"selector={self.selector!r} is unknown; expected one of {SELECTORS}")
        if self.selector != "none" and self.boost_bits <= self.key_bits:
            raise ValueError(
                f"boost_bits={self.boost_bits} must exceed key_bits={self.key_bits} when boosting"
            )
        if self.boost_values and self.selector != "static":
            raise ValueError(
                f"boost_values=True needs selector='static' (got {self.selector!r}): "
                "value tokens have no page to choose channels from"
            )
        if self.boost_values and self.boost_bits <= self.value_bits:
            raise ValueError(f"boost_bits={self.boost_bits} must exceed value_bits={self.value_bits}")
        if self.selector == "dynamic_magnitude" and self.n_boost <= 0:
            raise ValueError(f"n_boost={self.n_boost} must be > 0 for selector='dynamic_magnitude'")
        if self.n_boost < 0:
            raise ValueError(f"n_boost={self.n_boost} must be >= 0")
        for name in ("n_sink", "window"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.key_bits < 16:
            unit = 8 // storage_bits(self.key_bits)
            if self.selector != "none":
                unit = max(unit, 8 // storage_bits(self.boost_bits - self.key_bits))
            if self.page_size <= 0 or self.page_size % unit:
                raise ValueError(
                    f"page_size={self.page_size} must be a positive multiple of {unit} "
                    f"(the packing unit of {self.key_bits}-bit key codes along tokens)"
                )

    @property
    def passthrough(self) -> bool:
        """True when nothing is quantized (the 16-bit reference)."""
        return self.key_bits == 16 and self.value_bits == 16

    def replace(self, **changes) -> KVQuantConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    # presets ---------------------------------------------------------------------------
    @classmethod
    def fp16(cls) -> KVQuantConfig:
        """16-bit passthrough (equals ``DynamicCache``)."""
        return cls(key_bits=16, value_bits=16, boost_bits=16)

    @classmethod
    def kivi(cls, **kw) -> KVQuantConfig:
        """KIVI-KV2*: 2-bit keys per channel over 128-token pages, 2-bit values, 32 sinks."""
        return cls(**kw)

    @classmethod
    def kitty(cls, n_boost: int = 16, **kw) -> KVQuantConfig:
        """Kitty: KIVI-KV2* + per-page top-``n_boost`` key channels by mean |k| at 4 bits."""
        return cls(selector="dynamic_magnitude", n_boost=n_boost, **kw)

    @classmethod
    def static(cls, boost_values: bool = True, **kw) -> KVQuantConfig:
        """A static channel mask at 4 bits (FCBoost's CA mask, random or other masks)."""
        return cls(selector="static", boost_values=boost_values, **kw)

    fcboost = static
