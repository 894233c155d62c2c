"""benchmarks/profile_ca_gpu.py runs on CPU with a tiny model and imports no heavy extras."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = """
import runpy, sys
sys.argv = ["profile_ca_gpu.py", *{argv!r}]
runpy.run_path({script!r}, run_name="__main__")
banned = sorted(m for m in ("hydra", "omegaconf", "wandb", "gguf", "datasets") if m in sys.modules)
assert not banned, f"benchmark imported {{banned}}"
"""


def test_profile_ca_gpu_script_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    argv = [
        "--model",
        "tiny-qwen3",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--n-seq",
        "2",
        "--seq-len",
        "600",
        "--n-positions",
        "64",
        "--out",
        str(out),
    ]
    code = CHECK.format(argv=argv, script=str(ROOT / "benchmarks" / "profile_ca_gpu.py"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["n_sequences"] == 2 and res["seq_len"] == 600 and res["top_k"] == 256 and res["n_pairs"] == 8
    assert res["profile_seconds"] > 0 and res["peak_memory_bytes"] is None
    assert len(res["git_commit"]) == 40 or res["git_commit"] == "unknown"
    assert "profile_ca_gpu.py" in res["command"] and 0 < res["mean_ca"] < 1
    assert set(res["versions"]) == {"torch", "transformers"}
