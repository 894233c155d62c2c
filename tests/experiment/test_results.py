"""Results store: atomic job files, one locked JSON line per job, torn lines skipped, pandas in one call."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from fcboost.experiment.results import RECORD_KEYS, ResultsStore, load_results, result_key


def _record(key: str, seed: int = 0, metric: float = 0.5) -> dict:
    rec = {k: None for k in RECORD_KEYS}
    rec.update(
        key=key,
        model="tiny",
        method="kivi",
        task="gsm8k",
        protocol="p",
        seed=seed,
        metrics={"strict_match": metric},
        n_samples=1,
        config={},
        versions={},
        timings={},
        variant={},
    )
    return rec


def _append_many(args):
    d, start = args
    store = ResultsStore(d)
    for i in range(start, start + 25):
        store.write(_record(f"k{i}", seed=i), [{"doc_id": i, "text": "x" * 5000}], "a: 1\n")


def test_write_find_load(tmp_path):
    store = ResultsStore(tmp_path)
    rec = store.write(_record("abc"), [{"doc_id": 0, "response": "r"}], "seed: 0\n")
    job = tmp_path / "jobs" / "abc"
    assert rec["output_dir"] == str(job)
    assert json.loads((job / "result.json").read_text())["key"] == "abc"
    assert (job / "samples.jsonl").read_text().strip() == json.dumps({"doc_id": 0, "response": "r"})
    assert (job / "config.yaml").read_text() == "seed: 0\n"
    assert store.find(key="abc")["metrics"] == {"strict_match": 0.5}
    assert store.find(key="nope") is None
    df = load_results(tmp_path)
    assert list(df.key) == ["abc"] and set(RECORD_KEYS) <= set(df.columns)


def test_forced_rerun_keeps_the_latest(tmp_path):
    store = ResultsStore(tmp_path)
    store.write(_record("abc", metric=0.1), [], "")
    store.write(_record("abc", metric=0.9), [], "")
    df = load_results(tmp_path)
    assert len(df) == 1 and df.metrics[0] == {"strict_match": 0.9}
    assert len(load_results(tmp_path, latest=False)) == 2
    assert not [p for p in (tmp_path / "jobs").iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_concurrent_appends_never_interleave(tmp_path):
    with mp.get_context("fork").Pool(4) as pool:
        pool.map(_append_many, [(tmp_path, s) for s in (0, 25, 50, 75)])
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 100
    assert sorted(json.loads(line)["seed"] for line in lines) == list(range(100))


def test_torn_last_line_is_skipped(tmp_path):
    store = ResultsStore(tmp_path)
    store.write(_record("a"), [], "")
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"key": "b", "metrics": {"acc')  # a write cut short by a crash
    assert [r["key"] for r in store.records()] == ["a"]
    store.write(_record("c"), [], "")
    assert [r["key"] for r in store.records()] == ["a", "c"]


def test_missing_keys_are_refused(tmp_path):
    with pytest.raises(ValueError, match="lacks keys"):
        ResultsStore(tmp_path).write({"key": "x"}, [], "")


def test_key_changes_with_every_part():
    base = dict(
        fingerprint={"name": "m"},
        method="fcboost",
        quant={"key_bits": 2},
        mask_id="ca-1",
        task="gsm8k",
        protocol="p",
        seed=0,
    )
    k0 = result_key(**base)
    assert result_key(**base) == k0
    for field, value in [
        ("fingerprint", {"name": "m2"}),
        ("method", "kivi"),
        ("quant", {"key_bits": 4}),
        ("mask_id", "ca-2"),
        ("task", "aime24"),
        ("protocol", "q"),
        ("seed", 1),
    ]:
        assert result_key(**{**base, field: value}) != k0, field


def test_empty_store_loads(tmp_path):
    df = load_results(tmp_path)
    assert len(df) == 0 and "metrics" in df.columns


def test_write_json_replaces_whole_file(tmp_path):
    """The benchmarks' writer: the new content in full, the old file replaced, no temporary left."""
    from fcboost.experiment.results import write_json

    out = tmp_path / "bench.json"
    write_json(out, {"rows": [1]})
    write_json(str(out), {"rows": [1, 2]})
    assert json.loads(out.read_text()) == {"rows": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]
