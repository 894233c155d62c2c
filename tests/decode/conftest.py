"""Decode-path tests run the Triton kernels on the CPU interpreter unless a CUDA GPU is present.

``TRITON_INTERPRET`` must be set before any ``@triton.jit`` function is created.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    return DEVICE
