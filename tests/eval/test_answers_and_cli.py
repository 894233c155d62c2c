"""Boxed-answer checking, the byte tokenizer, and lm-eval's own command line with --model fcboost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fcboost.eval.answers import gsm8k_gold, is_correct, last_boxed

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.mark.parametrize(
    "text,expected",
    [
        (r"a \boxed{1} then \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{42}", "42"),
        ("no box", None),
        (r"\boxed{unclosed", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    "response,gold,ok",
    [
        (r"so \boxed{24}", 24, True),
        (r"\boxed{024}", "24", True),
        (r"\boxed{\dfrac{48}{2}}", "24", True),
        (r"\boxed{25}", 24, False),
        ("24", 24, False),
    ],
)
def test_is_correct(response, gold, ok):
    assert is_correct(response, gold) is ok


def test_task_hook_reads_both_aime_formats():
    sys.path.insert(0, str(ROOT / "fcboost" / "eval" / "tasks"))
    try:
        import utils
    finally:
        sys.path.pop(0)
    assert utils.process_aime({"Problem": "p", "Answer": 113}, [r"x = 13, \boxed{113}"]) == {"acc": 1}
    assert utils.process_aime({"problem": "p", "answer": "113"}, [r"\boxed{112}"]) == {"acc": 0}


def test_gsm8k_gold_of_fixture():
    rows = [json.loads(x) for x in open(FIXTURES / "gsm8k" / "test.jsonl")]
    assert [gsm8k_gold(r["answer"]) for r in rows] == ["10", "16", "240", "2000"]


def test_byte_tokenizer_round_trips():
    from fcboost.eval.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    text = "Wörld \\boxed{7}\n"
    ids = tok(text)["input_ids"]
    assert ids == list(text.encode("utf-8")) and tok.decode(ids) == text and len(tok) == 259


def test_lm_eval_command_line_runs_fcboost(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "FCBOOST_DATA": str(FIXTURES)}
    lm_eval = Path(sys.executable).parent / "lm_eval"
    cmd = [
        str(lm_eval),
        "--model",
        "fcboost",
        "--model_args",
        "pretrained=random:tiny-qwen3,tokenizer=byte,method=kitty",
        "--tasks",
        str(ROOT / "fcboost" / "eval" / "tasks" / "aime25.yaml"),
        "--apply_chat_template",
        "--limit",
        "2",
        "--gen_kwargs",
        "max_gen_toks=4",
        "--output_path",
        str(tmp_path),
        "--log_samples",
    ]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    res = json.loads(next(tmp_path.rglob("results_*.json")).read_text())
    assert res["results"]["fcboost_aime25"]["acc,none"] == 0.0
    samples = [json.loads(x) for x in open(next(tmp_path.rglob("samples_fcboost_aime25_*.jsonl")))]
    assert len(samples) == 2 and samples[0]["arguments"]["gen_args_0"]["arg_0"].startswith("<|im_start|>user")
