"""The built-in teacher-forced tasks: ``fidelity`` and ``perplexity`` (``fcboost.eval.fidelity``).

Token chunks come from one of two sources:

- ``text``: a text file (``wikitext-2/valid.txt``) tokenized in one piece and cut into ``n_chunks``
  consecutive chunks of ``seq_len`` tokens;
- ``problems``: a JSON/JSONL data set of problems (GSM8K, AIME); each chunk is the prompt followed
  by the 16-bit model's own greedy answer of up to ``max_new_tokens`` tokens, so the metrics follow
  the model's reasoning. The answers are cached on disk under ``cache_dir`` keyed by (model
  fingerprint, data hash, prompt, max_new_tokens).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fcboost.eval.harness import TaskOutcome

PROMPT_FIELDS = ("question", "Problem", "problem")


def text_chunks(tokenizer, path: str | Path, n_chunks: int, seq_len: int) -> list[torch.Tensor]:
    """``n_chunks`` LongTensors ``(seq_len,)`` of consecutive tokens of the text file ``path``."""
    ids = tokenizer(Path(path).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    need = n_chunks * seq_len
    if len(ids) < need:
        raise ValueError(
            f"{path} has {len(ids)} tokens; n_chunks={n_chunks} x seq_len={seq_len} = {need} needed"
        )
    return list(torch.tensor(ids[:need], dtype=torch.long).view(n_chunks, seq_len))  # n x (seq_len,)


def _prompt_ids(tokenizer, row: dict) -> list[int]:
    field = next((f for f in PROMPT_FIELDS if f in row), None)
    if field is None:
        raise ValueError(f"problem row has none of the prompt fields {PROMPT_FIELDS}: keys {sorted(row)}")
    if getattr(tokenizer, "chat_template", None):
        return list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": row[field]}],
                tokenize=True,
                add_generation_prompt=True,
                return_dict=False,
            )
        )
    return tokenizer(row[field], add_special_tokens=False)["input_ids"]


@torch.no_grad()
def greedy_answer_chunks(
    model,
    tokenizer,
    path: str | Path,
    n_chunks: int,
    max_new_tokens: int,
    fingerprint: dict,
    cache_dir: str | Path,
) -> list[torch.Tensor]:
    """Prompt + fp16 greedy answer ids ``(T_i,)`` for the first ``n_chunks`` problems of ``path`` (cached)."""
    from fcboost.eval.datasets import read_jsonl

    rows = read_jsonl(path)[:n_chunks]
    data_hash = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    device = next(model.parameters()).device
    chunks = []
    for row in tqdm(rows, desc="fp16 greedy answers", leave=False):
        prompt = _prompt_ids(tokenizer, row)
        key = hashlib.sha256(
            json.dumps([fingerprint, data_hash, prompt, max_new_tokens], sort_keys=True, default=str).encode()
        ).hexdigest()[:20]
        file = Path(cache_dir) / "greedy" / f"{key}.pt"
        if file.exists():
            chunks.append(torch.load(file))
            continue
        x = torch.tensor([prompt], device=device)
        out = model.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        ids = out[0].cpu()
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp")
        torch.save(ids, tmp)
        tmp.replace(file)
        chunks.append(ids)
    return chunks


def run_teacher_forced_task(
    loaded,
    quant_config,
    mask,
    kind: str,
    source: str,
    data: str,
    n_chunks: int,
    seq_len: int,
    prefill: int,
    min_pos: int,
    max_new_tokens: int | None,
    cache_dir: str | Path,
    data_file: str | None = None,
) -> TaskOutcome:
    """``kind``: ``fidelity`` (kl, top1_agree, nll, nll_fp16) or ``perplexity`` (ppl, ppl_fp16, nll)."""
    from fcboost.data import resolve_data_file
    from fcboost.eval.fidelity import fidelity

    if kind not in ("fidelity", "perplexity"):
        raise ValueError(f"kind={kind!r} is unknown; expected 'fidelity' or 'perplexity'")
    path = resolve_data_file(data_file or data)
    if source == "text":
        chunks = text_chunks(loaded.tokenizer, path, n_chunks, seq_len)
    elif source == "problems":
        chunks = greedy_answer_chunks(
            loaded.model,
            loaded.tokenizer,
            path,
            n_chunks,
            max_new_tokens or 256,
            loaded.fingerprint,
            cache_dir,
        )
    else:
        raise ValueError(f"source={source!r} is unknown; expected 'text' or 'problems'")
    samples, per = [], []
    for i, ids in enumerate(tqdm(chunks, desc=kind, leave=False)):
        m = fidelity(loaded.model, [ids], quant_config, mask=mask, prefill=prefill, min_pos=min_pos)
        per.append(m)
        samples.append({"doc_id": i, "n_tokens": int(ids.numel()), **{k: float(v) for k, v in m.items()}})
    n = sum(m["n_positions"] for m in per)
    mean = {k: sum(m[k] * m["n_positions"] for m in per) / n for k in ("kl", "top1_agree", "nll", "nll_fp16")}
    if kind == "fidelity":
        metrics = mean
    else:
        metrics = {"ppl": math.exp(mean["nll"]), "ppl_fp16": math.exp(mean["nll_fp16"]), "nll": mean["nll"]}
    metrics["n_positions"] = float(n)
    return TaskOutcome(
        metrics,
        samples,
        cache_bytes(loaded.model, chunks[0], quant_config, mask),
        extra={"data_file": str(path), "n_chunks": len(chunks)},
    )


@torch.no_grad()
def cache_bytes(model, ids: torch.Tensor, quant_config, mask) -> int:
    """Packed bytes of a ``QuantizedKVCache`` holding 1-D ``ids`` (prefill of all but the last token, then
    one decode step, so the prefill's pages are flushed as in generation)."""
    from fcboost.cache import QuantizedKVCache

    cache = QuantizedKVCache(model.config, quant_config, mask=mask)
    x = ids.to(next(model.parameters()).device)[None]  # (1, T)
    model(x[:, :-1], past_key_values=cache, use_cache=True)
    model(x[:, -1:], past_key_values=cache, use_cache=True)
    return int(cache.nbytes())
