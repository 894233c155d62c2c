"""Helpers of the experiment tests: Hydra compose against conf/, a run.py subprocess with the offline env."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
FIXTURES = ROOT / "tests" / "fixtures"
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
}
# Tiny generation settings shared by the pipeline tests.
TINY = ["model=tiny-qwen3", "task.max_new_tokens=4", "logger=none"]


_INIT: dict = {}


def compose(overrides: list[str] | None = None, return_hydra_config: bool = False, config_dir: Path = CONF):
    """Hydra compose API; Hydra is initialized once per config dir (re-initializing costs ~1 s)."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from fcboost.experiment.schema import register

    register()
    if _INIT.get("dir") != str(config_dir) or not GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
        initialize_config_dir(config_dir=str(config_dir), version_base="1.3")
        _INIT["dir"] = str(config_dir)
    return hcompose("config", overrides=overrides or [], return_hydra_config=return_hydra_config)


def run_cli(
    args: list[str], home: Path, timeout: float = 240, check: bool = True
) -> subprocess.CompletedProcess:
    """``python run.py <args>`` in a subprocess with the offline test env."""
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "FCBOOST_DATA": str(FIXTURES),
        "FCBOOST_HOME": str(home),
        "FCBOOST_CACHE": str(home / "cache"),
    }
    p = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and p.returncode != 0:
        raise AssertionError(
            f"run.py {args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
        )
    return p
