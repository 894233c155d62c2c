"""Structured-config schemas of the Hydra configs in ``conf/``.

Every group YAML extends one of these dataclasses (``defaults: [/schema/<group>@_here_: <name>]``),
so a misspelt key or a value of the wrong type fails when Hydra composes the config, with the key
named in the error. ``register()`` stores them in Hydra's ``ConfigStore``; ``run.py`` and the tests
call it before composing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class ModelConfig:
    """What ``fcboost.models.load`` gets: ``path`` is a hub id, local dir, GGUF file, ``smollm2-135m``
    or ``random:<name>``; ``tokenizer`` pairs a random model with a tokenizer (``"byte"`` or a path)."""

    name: str = MISSING
    path: str = MISSING
    dtype: str = "float32"
    device: str = "cpu"
    revision: str | None = None
    tokenizer: str | None = None
    seed: int = 0


@dataclass
class QuantConfig:
    """Fields of ``fcboost.quant.config.KVQuantConfig`` (same names, same meaning)."""

    key_bits: int = 2
    value_bits: int = 2
    boost_bits: int = 4
    page_size: int = 128
    n_sink: int = 32
    window: int = 128
    selector: str = "none"
    n_boost: int = 0
    boost_values: bool = False


@dataclass
class ProfileConfig:
    """Fields of ``fcboost.masks.profile.MaskSpec``; ``None`` keeps MaskSpec's default."""

    method: str = "ca"
    n_pairs: int | None = None
    pair_layout: str | None = None
    data: str | None = None
    n_sequences: int | None = None
    seq_len: int | None = None
    min_tokens: int | None = None
    n_positions: int | None = None
    top_k: int | None = None


@dataclass
class MaskConfig:
    """Where a static selector's ``ChannelMask`` comes from.

    ``source``: ``none`` (no mask), ``profile`` (built from ``profile`` and cached under
    ``paths.mask_dir``), ``random`` (``n_pairs`` random pairs from ``seed``) or ``file`` (``path``).
    """

    source: str = "none"
    path: str | None = None
    seed: int = 0
    n_pairs: int = 8
    pair_layout: str = "rotate_half"
    profile: ProfileConfig = field(default_factory=ProfileConfig)


@dataclass
class MethodConfig:
    name: str = MISSING
    quant: QuantConfig = field(default_factory=QuantConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)


@dataclass
class TaskConfig:
    """Common task fields. ``kind`` picks the runner: ``lm_eval``, ``fidelity`` or ``perplexity``."""

    name: str = MISSING
    kind: str = MISSING
    limit: int | None = None
    batch_size: int = 1
    max_new_tokens: int | None = None
    data_file: str | None = None


@dataclass
class LmEvalTaskConfig(TaskConfig):
    """A generation task of ``fcboost/eval/tasks/<yaml>.yaml`` run through lm-eval."""

    kind: str = "lm_eval"
    yaml: str = MISSING
    protocol: str = MISSING
    do_sample: bool = True
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20


@dataclass
class FidelityTaskConfig(TaskConfig):
    """Teacher-forced metrics (fidelity, perplexity) on ``n_chunks`` chunks of ``seq_len`` tokens.

    ``source``: ``text`` (chunks of the text file ``data``) or ``problems`` (prompts of the data set
    ``data`` followed by the fp16 model's own greedy answer of ``max_new_tokens`` tokens, cached).
    """

    kind: str = "fidelity"
    source: str = "text"
    data: str = "wikitext-2/valid.txt"
    n_chunks: int = 2
    seq_len: int = 512
    prefill: int = 64
    min_pos: int = 256


@dataclass
class LoggerConfig:
    kind: str = "none"
    project: str = "fcboost"
    entity: str | None = None
    mode: str = "offline"
    dir: str | None = None
    log_samples: bool = True


@dataclass
class PathsConfig:
    home: str = MISSING
    data: str | None = None
    results_dir: str = MISSING
    mask_dir: str = MISSING
    cache_dir: str = MISSING


@dataclass
class Config:
    """The top level: one job = (model, method, task, seed)."""

    model: ModelConfig = MISSING
    method: MethodConfig = MISSING
    task: Any = MISSING
    logger: LoggerConfig = MISSING
    paths: PathsConfig = MISSING
    seed: int = 0
    force: bool = False
    print_table: bool = True


TASK_SCHEMAS = {"lm_eval": LmEvalTaskConfig, "fidelity": FidelityTaskConfig}


def register() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="schema/model", name="model", node=ModelConfig)
    cs.store(group="schema/method", name="method", node=MethodConfig)
    cs.store(group="schema/task", name="lm_eval", node=LmEvalTaskConfig)
    cs.store(group="schema/task", name="fidelity", node=FidelityTaskConfig)
    cs.store(group="schema/logger", name="logger", node=LoggerConfig)
    cs.store(group="schema/paths", name="paths", node=PathsConfig)
