"""Run one lm-eval generation task (``fcboost/eval/tasks/<name>.yaml``) with the quantized cache.

``run_lm_eval_task`` returns the metrics under short names (``strict_match``, ``flexible_extract``,
``acc``), one merged record per document (prompt, response, extracted answers, per-filter scores)
and the largest packed cache size seen over the ``generate`` calls.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

TASKS_DIR = Path(__file__).parent / "tasks"


@dataclass
class Sampling:
    """Decoding settings fed to every ``generate`` call (REFERENCE.md §5: T=0.6, top-p 0.95, top-k 20)."""

    do_sample: bool = True
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20

    def generation_kwargs(self) -> dict:
        if not self.do_sample:
            return {"do_sample": False, "temperature": 0.0}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}


@dataclass
class TaskOutcome:
    metrics: dict[str, float]
    samples: list[dict]
    cache_bytes: int | None = None
    extra: dict = field(default_factory=dict)


def task_yaml_names() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def load_task_config(name: str) -> dict:
    """The task YAML ``name`` (a name in ``fcboost/eval/tasks`` or a path) as a dict, functions resolved."""
    from lm_eval.tasks._yaml_loader import load_yaml

    path = Path(name) if name.endswith(".yaml") else TASKS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(
            f"task yaml {name!r} is unknown; expected one of {task_yaml_names()} or a .yaml path"
        )
    return load_yaml(str(path), resolve_func=True)


def metric_name(metric: str, filt: str) -> str:
    """lm-eval's ``"exact_match,strict-match"`` -> ``"strict_match"``; ``"acc,none"`` -> ``"acc"``."""
    return metric if filt == "none" else filt.replace("-", "_")


def merge_samples(samples: list[dict]) -> list[dict]:
    """One record per document from lm-eval's per-filter sample entries."""
    by_doc: dict = {}
    for s in samples:
        rec = by_doc.setdefault(
            s["doc_id"],
            {
                "doc_id": s["doc_id"],
                "prompt": s["arguments"][0][0],
                "target": s["target"],
                "response": s["resps"][0][0],
                "extracted": {},
            },
        )
        rec["extracted"][s["filter"]] = s["filtered_resps"][0]
        for m in s.get("metrics", []):
            if m in s:
                rec[metric_name(m, s["filter"])] = float(s[m])
    return [by_doc[k] for k in sorted(by_doc, key=lambda d: int(d))]


def run_lm_eval_task(
    lm,
    yaml_name: str,
    seed: int,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    sampling: Sampling | None = None,
    data_file: str | None = None,
    apply_chat_template: bool | None = None,
) -> TaskOutcome:
    """Evaluate ``lm`` (an ``FCBoostLM``) on one task; ``seed`` goes to every RNG lm-eval seeds.

    ``apply_chat_template``: ``None`` uses the task's protocol (AIME: yes, GSM8K: no).
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    cfg = copy.deepcopy(load_task_config(yaml_name))
    gen = dict(cfg.get("generation_kwargs", {}))
    if sampling is not None:
        gen = {k: v for k, v in gen.items() if k not in ("do_sample", "temperature", "top_p", "top_k")}
        gen.update(sampling.generation_kwargs())
    if max_new_tokens is not None:
        gen["max_gen_toks"] = int(max_new_tokens)
    cfg["generation_kwargs"] = gen
    if data_file is not None:
        cfg.setdefault("dataset_kwargs", {})["data_file"] = str(data_file)
    if apply_chat_template is None:
        apply_chat_template = "aime" in cfg["task"]
    res = lm_eval.simple_evaluate(
        model=lm,
        tasks=[cfg],
        limit=limit,
        log_samples=True,
        apply_chat_template=apply_chat_template,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False),
    )
    task = cfg["task"]
    raw = res["results"][task]
    metrics = {}
    for k, v in raw.items():
        if "," not in k or "_stderr" in k:
            continue
        m, filt = k.split(",", 1)
        metrics[metric_name(m, filt)] = float(v)
    samples = merge_samples(res["samples"][task])
    return TaskOutcome(
        metrics,
        samples,
        getattr(lm, "cache_bytes", None),
        extra={
            "lm_eval_task": task,
            "n_samples": len(samples),
            "generation_kwargs": gen,
            "apply_chat_template": apply_chat_template,
        },
    )
