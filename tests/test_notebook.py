"""notebooks/analysis.ipynb runs top to bottom on the fixture store (tests/fixtures/results) and a tiny mask."""

import json
import os
from pathlib import Path

import nbformat
import pytest
import torch

ROOT = Path(__file__).parents[1]
NOTEBOOK = ROOT / "notebooks" / "analysis.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_executes_on_fixture(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    from fcboost.masks.mask import ChannelMask, mask_from_pair_scores

    masks = tmp_path / "masks"
    scores = torch.rand(2, 2, 8, generator=torch.Generator().manual_seed(0))  # (L, Hkv, d/2)
    mask = ChannelMask(
        mask_from_pair_scores(scores, 2, "rotate_half"), "rotate_half", 2, scores={"ca_kv": scores}
    )
    mask.save(masks / "ca-test.safetensors")
    analysis = tmp_path / "analysis"
    analysis.mkdir()
    stats = {"mean": 0.31, "std": 0.1, "n": 12}
    (analysis / "analysis_4_4.json").write_text(
        json.dumps(
            {
                "model": "qwen3-8b",
                "result": {
                    "n_top": 16,
                    "page_jaccard": {"ca": stats},
                    "spearman_ca_vs_magnitude": {"ca": stats},
                    "mask_overlap": {},
                },
            }
        )
    )
    env = {
        "FCBOOST_RESULTS": str(ROOT / "tests/fixtures/results"),
        "FCBOOST_ANALYSIS": str(analysis),
        "FCBOOST_MASKS": str(masks),
        "FCBOOST_FIGURES": str(tmp_path / "fig"),
        "WANDB_MODE": "disabled",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    text = "\n".join(
        str(o.get("text", "")) + json.dumps(o.get("data", {}), ensure_ascii=False)
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert "39 records" in text
    assert "**74.44 ± 1.57** (n=3)" in text  # Table 1, FCBoost AIME24 (bold: best)
    assert "63.33 ± 5.44 (n=3)" in text  # Table 2, random masks AIME24
    assert "0.310 ± 0.100 (n=12)" in text  # the 4.4 table from the JSON
    assert "1 mask artifacts" in text
    assert sorted(p.name for p in (tmp_path / "fig").glob("*.png")) == sorted(
        [
            "table1.png",
            "table2.png",
            "table1_small.png",
            "table2_small.png",
            "gsm8k_small.png",
            "fidelity_small.png",
            "ca-test.heatmap.png",
            "ca-test.by_frequency.png",
        ]
    )
    assert not any(
        o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    assert os.environ["FCBOOST_RESULTS"].endswith("fixtures/results")


if __name__ == "__main__":
    pytest.main([__file__])
