"""Scale-out: the basic, joblib and submitit_local launchers each run a 2-job sweep."""

from __future__ import annotations

import pytest
from exp_helpers import TINY, run_cli

from fcboost.experiment.results import load_results

SWEEP = [
    *TINY,
    "task=fidelity",
    "method=fp16,kivi",
    "task.n_chunks=1",
    "task.seq_len=300",
    "task.min_pos=200",
]


@pytest.mark.parametrize(
    "launcher",
    [
        [],
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"],
    ],
    ids=["basic", "joblib", "submitit_local"],
)
def test_two_job_sweep(tmp_path, launcher):
    home = tmp_path / "home"
    run_cli([*SWEEP, *launcher, "-m"], home, timeout=400)
    df = load_results(home / "results")
    assert sorted(df.method) == ["fp16", "kivi"]
    fp16 = df[df.method == "fp16"].iloc[0].metrics
    assert fp16["kl"] == pytest.approx(0.0, abs=1e-6) and fp16["top1_agree"] == 1.0
