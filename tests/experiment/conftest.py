"""Fixtures of the experiment tests."""

from __future__ import annotations

import pytest
from exp_helpers import FIXTURES, OFFLINE_ENV


@pytest.fixture
def env(tmp_path, monkeypatch):
    """FCBOOST_DATA -> tests/fixtures, FCBOOST_HOME -> a fresh tmp dir, HF offline. Returns FCBOOST_HOME."""
    monkeypatch.setenv("FCBOOST_DATA", str(FIXTURES))
    monkeypatch.setenv("FCBOOST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FCBOOST_CACHE", str(tmp_path / "cache"))
    for k, v in OFFLINE_ENV.items():
        monkeypatch.setenv(k, v)
    return tmp_path / "home"
