"""scripts/analysis_4_4.py end to end on a tiny random Qwen3 and the WikiText-2 fixture."""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_analysis_script_writes_json_the_report_reads(tmp_path, monkeypatch):
    monkeypatch.setenv("FCBOOST_DATA", str(ROOT / "tests" / "fixtures"))
    spec = importlib.util.spec_from_file_location("analysis_4_4", ROOT / "scripts" / "analysis_4_4.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    overrides = [
        "experiment=analysis_small",
        "model=tiny-qwen3",
        "method.mask.profile.n_pairs=2",
        "method.mask.profile.n_sequences=1",
        "method.mask.profile.seq_len=256",
        "method.mask.profile.min_tokens=128",
        "method.mask.profile.n_positions=16",
        "method.mask.profile.top_k=8",
        f"paths.mask_dir={tmp_path / 'masks'}",
    ]
    assert mod.main([*overrides, "--n-top", "4", "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "analysis_small.json").read_text())
    res = out["result"]
    assert set(out["masks"]) == {"ca_rotate_half", "ca_adjacent", "magnitude", "energy", "random_s42"}
    assert set(res["page_jaccard"]) == set(out["masks"])
    assert set(res["spearman_ca_vs_magnitude"]) == {
        "ca_rotate_half",
        "ca_adjacent",
    }  # only CA masks have CA scores
    for s in res["page_jaccard"].values():
        assert 0.0 <= s["mean"] <= 1.0 and s["n"] > 0
    from fcboost.experiment import report

    table = report.make_tables(report.normalize(pd.DataFrame()), ["analysis_small"], tmp_path)
    assert "Ours: ca_rotate_half" in table["analysis_small"].rows
    assert len(list((tmp_path / "masks").glob("*.safetensors"))) == 5  # cached for the next run
