"""Task data for lm-eval: local JSON/JSONL files in the upstream formats, found like every fcboost data set.

A task YAML names the files relative to ``$FCBOOST_DATA`` (``dataset_kwargs.data_files``), and its
``custom_dataset`` hook calls :func:`load_json_splits`, which resolves each file through
``fcboost.data.resolve_data_file`` (explicit ``data_file``, then ``$FCBOOST_DATA/<relative>``, then
the fcboost cache, then the HF hub) and loads it with ``datasets``' JSON builder.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSON-lines file (or of a JSON list)."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def resolve_split_files(data_files: dict[str, str], data_file: str | None = None) -> dict[str, str]:
    """``{split: path}`` with every relative name resolved; ``data_file`` replaces the (single) test split."""
    from fcboost.data import resolve_data_file

    if data_file:  # an explicit file (a path, or a name under $FCBOOST_DATA) never falls back to the default
        if len(data_files) != 1:
            raise ValueError(f"data_file={data_file!r} is ambiguous for the splits {sorted(data_files)}")
        return {next(iter(data_files)): str(resolve_data_file(data_file))}
    return {split: str(resolve_data_file(rel)) for split, rel in data_files.items()}


def load_json_splits(data_files: dict[str, str] | None = None, data_file: str | None = None, **_ignored):
    """A ``datasets.DatasetDict`` of the resolved JSON/JSONL ``data_files`` (lm-eval ``custom_dataset`` hook).

    Extra keyword arguments (lm-eval passes the task metadata) are ignored.
    """
    import datasets

    if not data_files:
        raise ValueError("load_json_splits needs data_files={split: relative path}")
    files = resolve_split_files(dict(data_files), data_file)
    return datasets.load_dataset("json", data_files=files)
