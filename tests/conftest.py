"""Shared fixtures: the embedded SmolLM2 (loaded once per session), tiny random models, the device."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# Triton kernels run on the CPU interpreter unless a CUDA GPU is present; TRITON_INTERPRET must be
# set before any @triton.jit function is created (fcboost imports its kernels lazily for this reason)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    """Where the kernel and decode tests run: the GPU when there is one, else the CPU interpreter."""
    return DEVICE


@pytest.fixture(scope="session")
def smollm2():
    """fcboost.models.LoadedModel of the embedded SmolLM2-135M-Instruct (fp32, CPU)."""
    from fcboost.models import load

    try:
        return load("smollm2-135m")
    except FileNotFoundError as e:  # the package is part of the README install; say so loudly
        pytest.fail(f"embedded SmolLM2 missing: {e}")


@pytest.fixture(scope="session")
def tiny_qwen3():
    from fcboost.models import random_model

    return random_model("tiny-qwen3", seed=0)


@pytest.fixture(scope="session")
def wikitext_valid() -> Path:
    """WikiText-2 validation text from $FCBOOST_DATA or ../shared/data."""
    root = Path(os.environ.get("FCBOOST_DATA", SHARED_DATA))
    path = root / "wikitext-2" / "valid.txt"
    if not path.exists():
        pytest.skip(f"WikiText-2 not found at {path} (set FCBOOST_DATA)")
    return path
