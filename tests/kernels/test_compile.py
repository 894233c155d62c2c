"""The kernels compile for Hopper (sm_90) with Triton's bundled ptxas, no GPU needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    try:
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
    except Exception as e:  # a Triton build without the CUDA backend
        pytest.skip(f"Triton's CUDA backend is unavailable: {e}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("compile_sm90.py")
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run(
        [sys.executable, str(script)],
        cwd=root,
        env={**env, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0 and "ALL COMPILED" in r.stdout, (
        f"compile failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    )


@pytest.mark.slow
def test_sass_stats_finds_the_page_loop():
    """benchmarks/sass_stats.py compiles the page kernel and finds the loop holding a kivi tile's 64 HMMA
    per warp: 4 key dots of K=128 (8 k-steps each) and 16 value dots of K=32 (2 each), one 16x8 block
    per warp."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
    except Exception as e:
        pytest.skip(f"Triton's CUDA backend is unavailable: {e}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "sass_stats.py"), "--methods", "kivi"],
        cwd=root,
        env={**env, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "('HMMA', 64)" in r.stdout, r.stdout
