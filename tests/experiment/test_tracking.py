"""W&B offline: the run dir holds config, summary metrics and the per-sample table; W&B failures lose nothing."""

from __future__ import annotations

import json

from exp_helpers import TINY, compose

from fcboost.experiment.pipeline import run
from fcboost.experiment.results import load_results
from fcboost.experiment.tracking import NullTracker, make_tracker


def test_wandb_offline_run_dir_reads_back(env, tmp_path):
    wdir = tmp_path / "wb"
    rec = run(
        compose(
            [
                *TINY,
                "task=fidelity",
                "method=kivi",
                "logger=wandb",
                f"logger.dir={wdir}",
                "task.n_chunks=1",
                "task.seq_len=300",
                "task.min_pos=200",
                "seed=3",
            ]
        )
    )
    runs = list((wdir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = runs[0] / "files"
    summary = json.loads((files / "fcboost-summary.json").read_text())
    assert summary == rec["metrics"]
    config = json.loads((files / "fcboost-config.json").read_text())
    assert (
        config["method"]["name"] == "kivi" and config["model"]["name"] == "tiny-qwen3" and config["seed"] == 3
    )
    tables = list(files.glob("media/table/samples_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert len(table["data"]) == rec["n_samples"] == 1 and "kl" in table["columns"]
    kl_col = table["columns"].index("kl")
    assert table["data"][0][kl_col] == rec["metrics"]["kl"]
    # W&B's own run log (protobuf records) holds the run name, group, config and summary keys.
    binlog = next(runs[0].glob("run-*.wandb")).read_bytes()
    for needle in (b"fidelity-kivi-s3", b"tiny-qwen3/fidelity/kivi", b"top1_agree", b"n_chunks"):
        assert needle in binlog, needle


def test_wandb_failure_keeps_local_results(env, tmp_path):
    rec = run(
        compose(
            [
                *TINY,
                "task=fidelity",
                "method=fp16",
                "logger=wandb",
                "logger.mode=not-a-mode",
                "task.n_chunks=1",
                "task.seq_len=300",
                "task.min_pos=200",
            ]
        )
    )
    assert rec["metrics"]["top1_agree"] == 1.0
    assert list(load_results(env / "results").key) == [rec["key"]]


def test_none_logger_is_a_no_op():
    t = make_tracker({"kind": "none"}, "n", "g", "m", {})
    assert isinstance(t, NullTracker)
    t.log_summary({"a": 1.0})
    t.log_table("samples", [{"x": 1}])
    t.finish()
