"""Find a data set and cut calibration chunks from it.

Resolution order of :func:`resolve_data_file` (first hit wins):

1. an explicit path that exists;
2. ``$FCBOOST_DATA/<relative>`` (e.g. ``wikitext-2/valid.txt``, ``gsm8k/train.jsonl``);
3. the HuggingFace hub through ``datasets`` (imported lazily), written once to
   ``$FCBOOST_CACHE`` (default ``~/.cache/fcboost``) ``/data/<relative>``.

Offline with nothing found, a :class:`FileNotFoundError` lists every place it looked.

:func:`calibration_chunks` follows the FCBoost authors' profiler: lines longer than 100 characters
are joined, the joined text is cut into chunks (at line boundaries) that are tokenized and truncated
to ``seq_len`` tokens, and chunks under ``min_tokens`` (512) tokens are skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

DEFAULT_DATA = "wikitext-2/train.txt"
MIN_LINE_CHARS = 100
# relative path -> (hub dataset, config, split, format) used when the file is not found locally.
HUB_SOURCES: dict[str, tuple[str, str | None, str, str]] = {
    "wikitext-2/train.txt": ("wikitext", "wikitext-2-raw-v1", "train", "text"),
    "wikitext-2/valid.txt": ("wikitext", "wikitext-2-raw-v1", "validation", "text"),
    "wikitext-2/test.txt": ("wikitext", "wikitext-2-raw-v1", "test", "text"),
    "gsm8k/train.jsonl": ("openai/gsm8k", "main", "train", "jsonl"),
    "gsm8k/test.jsonl": ("openai/gsm8k", "main", "test", "jsonl"),
    "aime24/test.jsonl": ("Maxwell-Jia/AIME_2024", None, "train", "jsonl"),
    "aime25/test.jsonl": ("math-ai/aime25", None, "test", "jsonl"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("FCBOOST_CACHE", Path.home() / ".cache" / "fcboost"))


def _fetch_from_hub(relative: str, target: Path) -> Path:
    """Download ``relative`` (a key of ``HUB_SOURCES``) with ``datasets`` and write it to ``target``."""
    if relative not in HUB_SOURCES:
        raise LookupError(f"no hub source known for {relative!r} (known: {sorted(HUB_SOURCES)})")
    name, config, split, fmt = HUB_SOURCES[relative]
    try:
        import datasets
    except ImportError as e:
        raise LookupError(f"`datasets` is not installed ({e})") from e
    ds = datasets.load_dataset(name, config, split=split)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in ds:
            f.write(row["text"] if fmt == "text" else json.dumps(row, default=str) + "\n")
    os.replace(tmp, target)
    return target


def resolve_data_file(
    name_or_path: str | os.PathLike | None = None, relative: str | None = None, hub: bool = True
) -> Path:
    """Path of a data file.

    ``name_or_path``: an existing file, or a relative name such as ``"wikitext-2/valid.txt"``
    (``None``: ``DEFAULT_DATA``, WikiText-2 raw train). ``relative`` overrides the name looked up
    under ``$FCBOOST_DATA``, the fcboost cache and the hub. ``hub=False`` skips the hub.
    """
    name = str(name_or_path) if name_or_path is not None else DEFAULT_DATA
    relative = relative or name
    looked: list[str] = []
    explicit = Path(name).expanduser()
    if explicit.is_file():
        return explicit
    looked.append(f"explicit path {explicit} (not a file)")
    root = os.environ.get("FCBOOST_DATA")
    if root:
        candidate = Path(root).expanduser() / relative
        if candidate.is_file():
            return candidate
        looked.append(f"$FCBOOST_DATA/{relative} = {candidate} (not a file)")
    else:
        looked.append(f"$FCBOOST_DATA/{relative} ($FCBOOST_DATA is not set)")
    cached = cache_dir() / "data" / relative
    if cached.is_file():
        return cached
    looked.append(f"fcboost cache {cached} (not a file)")
    if hub:
        try:
            return _fetch_from_hub(relative, cached)
        except Exception as e:  # noqa: BLE001 - any hub failure is reported in the error below
            looked.append(f"HuggingFace hub for {relative!r}: {e.__class__.__name__}: {str(e)[:200]}")
    else:
        looked.append("HuggingFace hub (skipped: hub=False)")
    raise FileNotFoundError(
        f"data {name!r} not found. Looked in:\n  - "
        + "\n  - ".join(looked)
        + "\nSet FCBOOST_DATA to a folder holding it, or pass an existing path."
    )


def read_long_lines(source: str | os.PathLike | Iterable[str], min_chars: int = MIN_LINE_CHARS) -> list[str]:
    """Lines longer than ``min_chars`` characters, stripped, from a data file/name or from texts."""
    if isinstance(source, (str, os.PathLike)):
        texts: Iterable[str] = [resolve_data_file(source).read_text(encoding="utf-8")]
    else:
        texts = source
    return [line.strip() for text in texts for line in text.splitlines() if len(line.strip()) > min_chars]


def calibration_chunks(
    tokenizer,
    source: str | os.PathLike | Sequence[str],
    n_sequences: int,
    seq_len: int,
    min_tokens: int = 512,
) -> list[torch.Tensor]:
    """``n_sequences`` LongTensors ``(T,)`` with ``min_tokens <= T <= seq_len`` (full chunks are ``seq_len``).

    ``source``: a data file or name (see :func:`resolve_data_file`) or a list of texts. Lines over
    100 characters are kept in order; a chunk is the shortest run of consecutive kept lines whose
    space-joined text tokenizes to at least ``seq_len`` tokens (or the rest of the text), truncated
    to ``seq_len``; the next chunk starts at the next line. A chunk under ``min_tokens`` tokens is
    skipped. No special tokens (BOS) are added, as in the authors' profiler.
    """
    if n_sequences < 1 or seq_len < 1:
        raise ValueError(f"n_sequences={n_sequences} and seq_len={seq_len} must be >= 1")
    if min_tokens > seq_len:
        raise ValueError(f"min_tokens={min_tokens} exceeds seq_len={seq_len}; lower min_tokens")
    lines = read_long_lines(source)

    def encode(i: int, n: int) -> list[int]:
        return tokenizer(" ".join(lines[i : i + n]), add_special_tokens=False)["input_ids"]

    chunks: list[torch.Tensor] = []
    i = 0
    while i < len(lines) and len(chunks) < n_sequences:
        lo, hi = 0, 1  # lines[i:i+lo] is too short; grow hi until lines[i:i+hi] is long enough (or all)
        while len(encode(i, hi)) < seq_len and i + hi < len(lines):
            lo, hi = hi, min(2 * hi, len(lines) - i)
        while hi - lo > 1:  # shortest run reaching seq_len tokens
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if len(encode(i, mid)) >= seq_len else (mid, hi)
        ids = encode(i, hi)
        i += hi
        if len(ids) >= min_tokens:
            chunks.append(torch.tensor(ids[:seq_len], dtype=torch.long))
    if len(chunks) < n_sequences:
        what = source if isinstance(source, (str, os.PathLike)) else f"{len(source)} texts"
        raise ValueError(
            f"calibration text {what!s} is too short: it gave {len(chunks)} chunk(s) of >= {min_tokens} tokens "
            f"({sum(len(c) for c in chunks)} tokens from {len(lines)} lines over {MIN_LINE_CHARS} chars), "
            f"but n_sequences={n_sequences} x seq_len={seq_len} were requested; use more text or fewer/shorter sequences"
        )
    return chunks


def data_hash(data: str | os.PathLike | bytes | Sequence[torch.Tensor]) -> str:
    """sha256 (16 hex) of a file's bytes, a text, or token chunks (their ids in order)."""
    h = hashlib.sha256()
    if isinstance(data, bytes):
        h.update(data)
    elif isinstance(data, os.PathLike):
        h.update(Path(data).read_bytes())
    elif isinstance(data, str):
        h.update(data.encode("utf-8"))
    else:
        for chunk in data:
            h.update(chunk.to(torch.int64).cpu().numpy().tobytes())
            h.update(b"|")
    return h.hexdigest()[:16]
