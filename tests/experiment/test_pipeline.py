"""The pipeline end to end on tiny random models with the offline fixtures."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from exp_helpers import FIXTURES, OFFLINE_ENV, ROOT, TINY, compose, run_cli

from fcboost.experiment.pipeline import run
from fcboost.experiment.results import load_results


def _run(overrides):
    return run(compose(TINY + overrides))


@pytest.mark.parametrize("task,field", [("aime24", "Problem"), ("aime25", "problem")])
def test_aime_uses_chat_template_and_boxed_checking(env, task, field):
    rec = _run([f"task={task}", "method=kivi", "task.limit=2"])
    assert rec["task"] == task and rec["n_samples"] == 2 and set(rec["metrics"]) == {"acc"}
    assert rec["protocol"] == "aime_boxed0:limit2:max4:t0.6"
    samples = [json.loads(x) for x in open(os.path.join(rec["output_dir"], "samples.jsonl"))]
    problems = [json.loads(x)[field] for x in open(FIXTURES / task / "test.jsonl")]
    for s, problem in zip(samples, problems):
        assert s["prompt"].startswith("<|im_start|>user\n" + problem)  # the chat template was applied
        assert "\\boxed{}" in s["prompt"] and s["prompt"].endswith("<|im_start|>assistant\n")
        assert s["acc"] == 0.0  # 4 random bytes hold no boxed answer
    assert rec["cache_bytes"] > 0


def test_fp16_fidelity_is_exact_and_store_skips(env, capsys):
    rec = _run(
        [
            "task=fidelity",
            "method=fp16",
            "task.data=wikitext-2/valid.txt",
            "task.seq_len=300",
            "task.min_pos=200",
            "task.prefill=32",
        ]
    )
    m = rec["metrics"]
    assert m["kl"] == pytest.approx(0.0, abs=1e-6) and m["top1_agree"] == 1.0
    assert m["nll"] == pytest.approx(m["nll_fp16"], abs=1e-6) and m["n_positions"] == 2 * 99
    assert "| tiny-qwen3 | fp16 | fidelity | 0 |" in capsys.readouterr().out
    again = _run(
        [
            "task=fidelity",
            "method=fp16",
            "task.data=wikitext-2/valid.txt",
            "task.seq_len=300",
            "task.min_pos=200",
            "task.prefill=32",
        ]
    )
    assert again.get("skipped") and again["key"] == rec["key"]


def test_quantized_perplexity_and_random_mask(env):
    rec = _run(
        [
            "task=perplexity",
            "method=random_mask",
            "method.mask.n_pairs=4",
            "method.mask.seed=3",
            "method.quant.page_size=32",
            "method.quant.n_sink=4",
            "method.quant.window=16",
            "task.n_chunks=1",
            "task.seq_len=300",
            "task.min_pos=200",
        ]
    )
    assert rec["variant"] == {
        "pair_layout": "rotate_half",
        "boost_values": True,
        "n_boost": 8,
        "n_pairs": 4,
        "mask_seed": 3,
    }
    assert rec["mask_id"].startswith("random-")
    m = rec["metrics"]
    assert m["ppl"] == pytest.approx(math.exp(m["nll"])) and m["ppl"] != pytest.approx(
        m["ppl_fp16"], rel=1e-6
    )


def test_fcboost_profiles_and_caches_its_mask(env):
    over = [
        "task=fidelity",
        "method=fcboost",
        "method.mask.profile.n_pairs=4",
        "method.mask.profile.n_sequences=1",
        "method.mask.profile.seq_len=600",
        "method.mask.profile.min_tokens=300",
        "method.mask.profile.n_positions=32",
        "method.mask.profile.top_k=16",
        "task.n_chunks=1",
        "task.seq_len=300",
        "task.min_pos=200",
    ]
    rec = _run(over)
    masks = list((env / "masks").glob("*.safetensors"))
    assert len(masks) == 1 and rec["mask_id"].startswith("ca-")
    rec2 = _run([*over, "seed=1"])  # another seed reuses the cached mask
    assert rec2["mask_id"] == rec["mask_id"] and list((env / "masks").glob("*.safetensors")) == masks


def test_missing_data_file_says_where_it_looked(env):
    with pytest.raises(FileNotFoundError) as e:
        _run(["task=gsm8k", "method=kivi", "task.data_file=/no/such/gsm8k.jsonl", "task.limit=1"])
    msg = str(e.value)
    assert "/no/such/gsm8k.jsonl" in msg and "FCBOOST_DATA" in msg and "hub" in msg.lower()


def test_sweep_killed_midway_resumes_then_skips(tmp_path):
    """A 6-job multirun killed after >= 1 record; the rerun completes it; a third run skips all six."""
    home = tmp_path / "home"
    args = [*TINY, "method=kivi,kitty,random_mask", "task=gsm8k", "task.limit=1", "seed=0,1", "-m"]
    env = {**os.environ, **OFFLINE_ENV, "FCBOOST_DATA": str(FIXTURES), "FCBOOST_HOME": str(home)}
    p = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    store = home / "results" / "results.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        if store.exists() and len(store.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    n_before = len(store.read_text().splitlines())
    assert 1 <= n_before < 6
    run_cli(args, home)
    df = load_results(home / "results", latest=False)
    assert len(df) == 6 and df.key.is_unique
    assert sorted(zip(df.method, df.seed)) == sorted(
        (m, s) for m in ("kivi", "kitty", "random_mask") for s in (0, 1)
    )
    out = run_cli(args, home).stdout
    assert out.count("skip:") == 6
    assert len(load_results(home / "results", latest=False)) == 6
