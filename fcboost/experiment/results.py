"""The results store: one JSON line per finished job in ``<results_dir>/results.jsonl``, plus the job's
files under ``<results_dir>/jobs/<key>/``.

A job's files are written into a temporary folder and renamed into place; then its record is
appended to ``results.jsonl`` under an exclusive ``fcntl`` lock with flush + fsync, as one
``write``. The record is the commit point: a job killed before it leaves no record and is rerun.
Readers skip a torn last line. ``load_results(results_dir)`` returns a DataFrame (last record per key).

Record keys (the report reads them): key, request_key, model, model_fingerprint, method, variant,
mask_id, task, protocol, seed, metrics, n_samples, config, versions, timings, cache_bytes,
finished_at, output_dir.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

RECORD_KEYS = (
    "key",
    "model",
    "model_fingerprint",
    "method",
    "variant",
    "mask_id",
    "task",
    "protocol",
    "seed",
    "metrics",
    "n_samples",
    "config",
    "versions",
    "timings",
    "cache_bytes",
    "finished_at",
    "output_dir",
)


def stable_hash(obj, n: int = 16) -> str:
    """sha256 (``n`` hex) of the canonical JSON of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def result_key(
    fingerprint: dict, method: str, quant: dict, mask_id: str | None, task: str, protocol: str, seed: int
) -> str:
    """The store's key: (model fingerprint, method incl. quantizer and mask id, task, protocol, seed)."""
    return stable_hash(
        {
            "model": fingerprint,
            "method": method,
            "quant": quant,
            "mask": mask_id,
            "task": task,
            "protocol": protocol,
            "seed": seed,
        }
    )


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see the old file or
    the whole new one, never a torn write."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, obj, indent: int = 1) -> None:
    """``obj`` as JSON at ``path``, atomically (the benchmarks rewrite their output after every row,
    so a run cut short leaves the rows so far, never half a file). Standard library only: the GPU
    image imports it too."""
    _atomic_write(Path(path), json.dumps(obj, indent=indent))


class ResultsStore:
    """``results_dir/results.jsonl`` + ``results_dir/jobs/<key>/``; safe for concurrent jobs on one file system."""

    def __init__(self, results_dir: str | os.PathLike):
        self.dir = Path(results_dir)
        self.file = self.dir / "results.jsonl"

    def records(self) -> list[dict]:
        """Every complete record in file order (a torn line, e.g. from a crash mid-write, is skipped)."""
        if not self.file.exists():
            return []
        out = []
        with open(self.file, encoding="utf-8") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def find(self, key: str | None = None, request_key: str | None = None) -> dict | None:
        """The last record with this ``key`` (or ``request_key``), or ``None``."""
        hit = None
        for r in self.records():
            if (key is not None and r.get("key") == key) or (
                request_key is not None and r.get("request_key") == request_key
            ):
                hit = r
        return hit

    def job_dir(self, key: str) -> Path:
        return self.dir / "jobs" / key

    def write(self, record: dict, samples: list[dict], config_yaml: str) -> dict:
        """Write the job's files atomically, then append ``record`` (the commit). Returns the record."""
        missing = [k for k in RECORD_KEYS if k not in record]
        if missing:
            raise ValueError(f"record lacks keys {missing}")
        final = self.job_dir(record["key"])
        record = {**record, "output_dir": str(final)}
        tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _atomic_write(tmp / "result.json", json.dumps(record, indent=2, default=str))
        _atomic_write(tmp / "samples.jsonl", "".join(json.dumps(s, default=str) + "\n" for s in samples))
        _atomic_write(tmp / "config.yaml", config_yaml)
        if final.exists():  # a forced rerun replaces the older files
            old = final.with_name(f".old-{final.name}-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        self.append(record)
        return record

    def append(self, record: dict) -> None:
        """Append one JSON line under an exclusive lock, flushed and fsynced."""
        self.dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, default=str) + "\n"
        with open(self.dir / "results.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(self.file, "a+b") as f:
                    if f.tell() > 0:  # a torn last line (crash mid-write) must not swallow this record
                        f.seek(-1, os.SEEK_END)
                        if f.read(1) != b"\n":
                            line = "\n" + line
                    f.write(line.encode("utf-8"))
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def load_results(results_dir: str | os.PathLike, latest: bool = True):
    """The store as a ``pandas.DataFrame``, one row per record (``latest``: last record per key).

    Metrics stay a dict column; ``df.join(pd.json_normalize(df.metrics))`` flattens them.
    """
    import pandas as pd

    recs = ResultsStore(results_dir).records()
    df = pd.DataFrame.from_records(recs, columns=list(RECORD_KEYS) + ["request_key"] if not recs else None)
    if latest and len(df):
        df = df.drop_duplicates("key", keep="last").reset_index(drop=True)
    return df
