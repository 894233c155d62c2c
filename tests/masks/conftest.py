"""Fixtures of the mask tests: a tiny random Qwen3, a character-level tokenizer and a small text file."""

from __future__ import annotations

import pytest
import torch

from fcboost.models import random_model


class CharTokenizer:
    """Token id = byte value % 256: enough to cut calibration chunks without a real vocabulary."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [b % 256 for b in text.encode("utf-8")]}


@pytest.fixture(scope="session")
def tiny_qwen3():
    return random_model("tiny-qwen3", seed=0)


@pytest.fixture(scope="session")
def tiny_llama():
    return random_model("tiny-llama", seed=0)


@pytest.fixture
def char_tok() -> CharTokenizer:
    return CharTokenizer()


@pytest.fixture
def text_file(tmp_path):
    """A text with 60 long lines (~150 chars each) and short lines in between."""
    gen = torch.Generator().manual_seed(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "lambda"]
    lines = []
    for i in range(60):
        idx = torch.randint(0, len(words), (25,), generator=gen).tolist()
        lines.append(f"line {i} " + " ".join(words[j] for j in idx))
        lines.append(" = short heading = ")
    path = tmp_path / "corpus" / "wikitext-2" / "valid.txt"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines))
    return path
