"""One job of the experiment pipeline: (model, method, task, seed) -> a record in the results store.

``run(cfg)`` (called by ``run.py``'s ``@hydra.main``):

1. skip if the store already holds the job (same request, or same key after loading) unless ``force``;
2. load the model (``fcboost.models``), build the ``KVQuantConfig`` and the mask (profiled masks are
   cached under ``paths.mask_dir``);
3. run the task (lm-eval generation task, or the teacher-forced fidelity/perplexity task);
4. write files + record atomically to ``paths.results_dir``, then log to W&B;
5. free the model and finish the W&B run (a multirun runs the next job in the same process).
"""

from __future__ import annotations

import gc
import logging
import os
import platform
import random
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from fcboost.experiment.methods import build_mask, build_quant_config, variant
from fcboost.experiment.results import ResultsStore, result_key, stable_hash
from fcboost.experiment.tracking import make_tracker

log = logging.getLogger(__name__)
TASK_KINDS = ("lm_eval", "fidelity", "perplexity")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def protocol_of(task) -> str:
    """Short protocol string, e.g. ``gsm8k_cot8:limit20:max4096:t0.6`` or ``fidelity:text:wikitext-2/valid.txt:2x512:pre64:min256``."""
    limit = f"limit{task.limit}" if task.limit is not None else "all"
    if task.kind == "lm_eval":
        s = f"{task.protocol}:{limit}:max{task.max_new_tokens}"
        if not task.do_sample:
            return s + ":greedy"
        s += f":t{task.temperature:g}"
        if (task.top_p, task.top_k) != (0.95, 20):
            s += f":p{task.top_p:g}:k{task.top_k}"
        return s
    s = f"{task.kind}:{task.source}:{task.data}:{task.n_chunks}x{task.seq_len}:pre{task.prefill}:min{task.min_pos}"
    if task.source == "problems":
        s += f":max{task.max_new_tokens}"
    return s


def versions() -> dict:
    import lm_eval
    import transformers

    import fcboost

    out = {
        "fcboost": fcboost.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lm_eval": lm_eval.__version__,
        "python": platform.python_version(),
    }
    try:
        root = Path(fcboost.__file__).resolve().parent.parent
        out["git"] = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        out["git"] = None
    return out


def job_device(device: str) -> str:
    """``cuda`` -> ``cuda:<job number mod GPUs>`` in a multirun with several GPUs (one GPU per job)."""
    if device != "cuda" or torch.cuda.device_count() <= 1:
        return device
    try:
        from hydra.core.hydra_config import HydraConfig

        num = HydraConfig.get().job.num
    except (ValueError, AttributeError):
        return device
    return f"cuda:{num % torch.cuda.device_count()}"


def load_model(model_cfg):
    from fcboost.eval.lm_eval_model import load_pretrained

    return load_pretrained(
        model_cfg.path, model_cfg.tokenizer, model_cfg.dtype, job_device(model_cfg.device), model_cfg.seed
    )


def run_task(cfg: DictConfig, loaded, quant, mask):
    """The task's :class:`~fcboost.eval.harness.TaskOutcome`."""
    task = cfg.task
    if task.kind not in TASK_KINDS:
        raise ValueError(f"task.kind={task.kind!r} is unknown; expected one of {TASK_KINDS}")
    if task.kind == "lm_eval":
        from fcboost.eval.harness import Sampling, run_lm_eval_task
        from fcboost.eval.lm_eval_model import FCBoostLM

        device = str(next(loaded.model.parameters()).device)
        lm = FCBoostLM(
            pretrained=loaded.model,
            tokenizer=loaded.tokenizer,
            quant_config=quant,
            mask=mask,
            batch_size=task.batch_size,
            device=device,
        )
        sampling = Sampling(task.do_sample, task.temperature, task.top_p, task.top_k)
        try:
            return run_lm_eval_task(
                lm,
                task.yaml,
                cfg.seed,
                limit=task.limit,
                max_new_tokens=task.max_new_tokens,
                sampling=sampling,
                data_file=task.data_file,
            )
        finally:
            del lm
    from fcboost.eval.teacher_forced import run_teacher_forced_task

    return run_teacher_forced_task(
        loaded,
        quant,
        mask,
        task.kind,
        task.source,
        task.data,
        task.n_chunks if task.limit is None else min(task.n_chunks, task.limit),
        task.seq_len,
        task.prefill,
        task.min_pos,
        task.max_new_tokens,
        cfg.paths.cache_dir,
        task.data_file,
    )


def request_key(cfg: DictConfig, protocol: str) -> str:
    """Key of the request (from the config alone), to skip finished jobs before loading anything."""
    model = {k: cfg.model[k] for k in ("path", "dtype", "revision", "tokenizer", "seed")}
    method = OmegaConf.to_container(cfg.method, resolve=True)
    if method["mask"]["source"] != "profile":
        method["mask"].pop("profile")  # calibration settings do not change a method without a profiled mask
    return stable_hash(
        {"model": model, "method": method, "task": cfg.task.name, "protocol": protocol, "seed": cfg.seed}
    )


def format_table(record: dict) -> str:
    """A short markdown table of one record's metrics."""
    head = f"| model | method | task | seed | {' | '.join(record['metrics'])} | cache bytes |"
    vals = " | ".join(f"{v:.4g}" for v in record["metrics"].values())
    row = (
        f"| {record['model']} | {record['method']} | {record['task']} | {record['seed']} | {vals} | "
        f"{record['cache_bytes']} |"
    )
    return "\n".join([head, "|" + "---|" * (head.count("|") - 1), row])


def run(cfg: DictConfig) -> dict:
    """Run one job; return its record (the stored one when the job is skipped)."""
    t0 = time.perf_counter()
    if cfg.paths.get("data") and not os.environ.get("FCBOOST_DATA"):
        os.environ["FCBOOST_DATA"] = str(cfg.paths.data)
    store = ResultsStore(cfg.paths.results_dir)
    protocol = protocol_of(cfg.task)
    rkey = request_key(cfg, protocol)
    if not cfg.force and (done := store.find(request_key=rkey)) is not None:
        print(
            f"skip: {cfg.task.name}/{cfg.method.name}/seed {cfg.seed} already in {store.file} (force=true reruns)"
        )
        return {**done, "skipped": True}
    seed_everything(cfg.seed)
    loaded = load_model(cfg.model)
    t_load = time.perf_counter()
    quant = build_quant_config(cfg.method)
    mask = build_mask(cfg.method, loaded, cfg.paths.mask_dir, quant)
    t_mask = time.perf_counter()
    mask_id = mask.id if mask is not None else None
    key = result_key(
        loaded.fingerprint, cfg.method.name, quant.to_dict(), mask_id, cfg.task.name, protocol, cfg.seed
    )
    if not cfg.force and (done := store.find(key=key)) is not None:
        print(f"skip: key {key} already in {store.file}")
        del loaded
        gc.collect()
        return {**done, "skipped": True}
    config = OmegaConf.to_container(cfg, resolve=True)
    name = f"{cfg.task.name}-{cfg.method.name}-s{cfg.seed}"
    group = f"{cfg.model.name}/{cfg.task.name}/{cfg.method.name}"
    tracker = make_tracker(
        OmegaConf.to_container(cfg.logger, resolve=True), name, group, cfg.method.name, config
    )
    try:
        seed_everything(cfg.seed)
        outcome = run_task(cfg, loaded, quant, mask)
        t_task = time.perf_counter()
        record = {
            "key": key,
            "request_key": rkey,
            "model": cfg.model.name,
            "model_fingerprint": loaded.fingerprint,
            "method": cfg.method.name,
            "variant": variant(cfg.method, quant, mask),
            "mask_id": mask_id,
            "task": cfg.task.name,
            "protocol": protocol,
            "seed": int(cfg.seed),
            "metrics": outcome.metrics,
            "n_samples": len(outcome.samples),
            "config": config,
            "versions": versions(),
            "timings": {
                "load_s": t_load - t0,
                "mask_s": t_mask - t_load,
                "task_s": t_task - t_mask,
                "total_s": time.perf_counter() - t0,
            },
            "cache_bytes": outcome.cache_bytes,
            "quant_config": quant.to_dict(),
            "task_info": outcome.extra,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "output_dir": "",
        }
        record = store.write(record, outcome.samples, OmegaConf.to_yaml(cfg, resolve=True))
        tracker.log_summary(outcome.metrics)
        if cfg.logger.get("log_samples", True):
            tracker.log_table("samples", outcome.samples)
    finally:
        tracker.finish()
        del loaded
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if cfg.get("print_table", True):
        print(format_table(record))
    return record
