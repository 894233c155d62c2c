"""Data resolution order, the error listing where it looked, calibration chunking and hashing."""

from __future__ import annotations

import pytest
import torch

import fcboost.data as data
from fcboost.data import calibration_chunks, data_hash, read_long_lines, resolve_data_file


class CharTokenizer:
    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [b % 256 for b in text.encode("utf-8")]}


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Empty FCBOOST_DATA and cache folders; the hub call recorded instead of made."""
    root, cache = tmp_path / "data", tmp_path / "cache"
    root.mkdir()
    monkeypatch.setenv("FCBOOST_DATA", str(root))
    monkeypatch.setenv("FCBOOST_CACHE", str(cache))
    calls = []

    def fake_hub(relative, target):
        calls.append(relative)
        raise ConnectionError("hub unreachable (test)")

    monkeypatch.setattr(data, "_fetch_from_hub", fake_hub)
    return root, cache, calls


def _write(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_resolution_order(env, tmp_path, monkeypatch):
    root, cache, calls = env
    rel = "wikitext-2/valid.txt"
    cached = _write(cache / "data" / rel)
    assert resolve_data_file(rel) == cached  # 3rd place: the fcboost cache
    in_root = _write(root / rel)
    assert resolve_data_file(rel) == in_root  # $FCBOOST_DATA beats the cache
    explicit = _write(tmp_path / "mine.txt")
    assert resolve_data_file(explicit) == explicit  # an existing path beats everything
    assert resolve_data_file("anything", relative=rel) == in_root  # relative overrides the name
    assert calls == []


def test_hub_is_last_and_its_file_is_used(env, monkeypatch):
    root, cache, calls = env

    def hub(relative, target):
        calls.append(relative)
        return _write(target, "from hub")

    monkeypatch.setattr(data, "_fetch_from_hub", hub)
    path = resolve_data_file("gsm8k/train.jsonl")
    assert calls == ["gsm8k/train.jsonl"] and path == cache / "data" / "gsm8k" / "train.jsonl"
    assert resolve_data_file("gsm8k/train.jsonl") == path and calls == ["gsm8k/train.jsonl"]  # cached now


def test_not_found_lists_every_place(env, monkeypatch):
    root, cache, calls = env
    with pytest.raises(FileNotFoundError) as e:
        resolve_data_file("wikitext-2/valid.txt")
    msg = str(e.value)
    assert "explicit path wikitext-2/valid.txt" in msg
    assert f"$FCBOOST_DATA/wikitext-2/valid.txt = {root}/wikitext-2/valid.txt" in msg
    assert f"fcboost cache {cache}/data/wikitext-2/valid.txt" in msg
    assert "HuggingFace hub for 'wikitext-2/valid.txt': ConnectionError: hub unreachable" in msg
    monkeypatch.delenv("FCBOOST_DATA")
    with pytest.raises(FileNotFoundError, match=r"\$FCBOOST_DATA is not set(.|\n)*skipped: hub=False"):
        resolve_data_file("wikitext-2/valid.txt", hub=False)
    assert calls == ["wikitext-2/valid.txt"]


def test_unknown_hub_name_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("FCBOOST_CACHE", str(tmp_path))
    monkeypatch.delenv("FCBOOST_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="LookupError: no hub source known for 'nope/x.txt'"):
        resolve_data_file("nope/x.txt")


def test_calibration_chunks(tmp_path):
    long_lines = [f"{i:03d} " + "abcdefghij" * 12 for i in range(32)]  # 124 chars each
    text = "\n".join(line for pair in zip(long_lines, [" = Head = "] * 32) for line in pair)
    path = _write(tmp_path / "c.txt", text)
    assert read_long_lines(path) == long_lines  # short lines dropped
    tok = CharTokenizer()
    kw = dict(seq_len=500)
    chunks = calibration_chunks(tok, path, n_sequences=6, min_tokens=300, **kw)
    assert [len(c) for c in chunks] == [500] * 6
    for i, c in enumerate(chunks):  # 5 lines (620 chars) per chunk, joined with spaces, cut to 500 tokens
        assert c.tolist() == list(" ".join(long_lines[5 * i : 5 * i + 5]).encode()[:500])
    assert all(c.dtype == torch.long for c in chunks)
    # the trailing 2 lines (249 tokens) form a chunk only when min_tokens allows it
    with pytest.raises(
        ValueError, match=r"too short: it gave 6 chunk\(s\) of >= 300 tokens.*n_sequences=7 x seq_len=500"
    ):
        calibration_chunks(tok, path, n_sequences=7, min_tokens=300, **kw)
    last = calibration_chunks(tok, path, n_sequences=7, min_tokens=200, **kw)[-1]
    assert last.tolist() == list(" ".join(long_lines[30:]).encode())
    with pytest.raises(ValueError, match="min_tokens=600 exceeds seq_len=500"):
        calibration_chunks(tok, path, n_sequences=1, min_tokens=600, **kw)
    # a list of texts works like a file
    assert torch.equal(calibration_chunks(tok, [text], 6, min_tokens=300, **kw)[2], chunks[2])
    # 9 lines (1124 chars) make a 1000-token chunk: 3 of them from 32 lines
    three = calibration_chunks(tok, path, 3, 1000, min_tokens=300)
    assert [c.tolist()[:3] for c in three] == [list(long_lines[j][:3].encode()) for j in (0, 9, 18)]


def test_data_hash(tmp_path):
    p = _write(tmp_path / "a.txt", "hello")
    assert data_hash(p) == data_hash("hello") == data_hash(b"hello")
    assert data_hash(p) != data_hash("hello!")
    c = [torch.arange(5), torch.arange(3)]
    assert (
        data_hash(c)
        == data_hash([torch.arange(5), torch.arange(3)])
        != data_hash([torch.arange(3), torch.arange(5)])
    )
    assert len(data_hash(c)) == 16
