"""Hooks the task YAMLs in this folder reference with ``!function utils.<name>``.

Importing this module also registers the ``fcboost`` lm-eval model, so ``lm_eval --model fcboost``
works with these YAML files passed as ``--tasks <path>.yaml`` (lm-eval resolves their functions
before it builds the model).
"""

from fcboost.eval import lm_eval_model  # noqa: F401  (registers --model fcboost)
from fcboost.eval.answers import is_correct
from fcboost.eval.datasets import load_json_splits


def load_dataset(**kwargs):
    """lm-eval ``custom_dataset``: local JSON/JSONL splits through ``fcboost.data`` resolution."""
    return load_json_splits(**kwargs)


def process_aime(doc: dict, results: list[str]) -> dict[str, int]:
    """``acc`` = 1 when the last ``\\boxed{}`` of the response equals the gold answer (math-verify)."""
    gold = doc["Answer"] if "Answer" in doc else doc["answer"]
    return {"acc": int(is_correct(results[0], gold))}
