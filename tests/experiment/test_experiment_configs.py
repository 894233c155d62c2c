"""conf/experiment/*: every experiment composes, and the paper's settings are what the sweeps run."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fcboost.experiment.schema import register

CONF = Path(__file__).parents[2] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _compose(overrides):
    register()
    with initialize_config_dir(str(CONF), version_base=None):
        return compose("config", overrides=overrides, return_hydra_config=True)


def _jobs(name):
    """The override lists of the sweep's jobs (cartesian product of hydra.sweeper.params)."""
    import itertools

    params = _compose([f"experiment={name}"]).hydra.sweeper.params or {}
    keys = list(params)
    values = [str(params[k]).split(",") for k in keys]
    return [
        [f"experiment={name}", *(f"{k}={v}" for k, v in zip(keys, combo))]
        for combo in itertools.product(*values)
    ]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name, monkeypatch):
    monkeypatch.setenv("FCBOOST_DATA", "/data")
    jobs = _jobs(name)
    for job in (jobs[0], jobs[-1]):  # the first and last of the sweep (all of table1/table2 below)
        cfg = _compose(job)
        OmegaConf.to_container(cfg.task, resolve=True)  # interpolations resolve


def test_table1_is_the_papers_grid():
    jobs = _jobs("table1")
    assert len(jobs) == 18  # 3 methods x 2 tasks x 3 seeds
    seen = set()
    for job in jobs:
        cfg = _compose(job)
        assert cfg.model.name == "qwen3-8b" and cfg.task.max_new_tokens == 32768
        assert (cfg.task.temperature, cfg.task.top_p, cfg.task.top_k) == (0.6, 0.95, 20)
        if cfg.method.name == "kitty":
            assert cfg.method.quant.n_boost == 16  # K = 16
        if cfg.method.name == "fcboost":
            assert cfg.method.mask.profile.n_pairs == 8 and cfg.method.quant.boost_bits == 4  # F = 8
        seen.add((cfg.method.name, cfg.task.name, cfg.seed))
    assert seen == {
        (m, t, s) for m in ("kivi", "kitty", "fcboost") for t in ("aime24", "aime25") for s in (0, 1, 2)
    }


def test_table2_random_mask_seeds():
    got = {
        (c.method.name, c.method.mask.seed, c.method.mask.n_pairs, c.task.name)
        for c in map(_compose, _jobs("table2"))
    }
    assert got == {("random_mask", s, 8, t) for s in (42, 123, 456) for t in ("aime24", "aime25")}


def test_small_experiments_share_settings(monkeypatch):
    monkeypatch.setenv("FCBOOST_DATA", "/data")
    a = _compose(["experiment=table1_small", "method=fcboost"])
    b = _compose(["experiment=variants_small"])
    assert a.model.name == b.model.name == "smollm2-135m"
    assert a.method.mask.profile == b.method.mask.profile  # same CA mask (same cache key)
    assert a.task.limit == 4 and a.task.data_file == "/data/gsm8k/train.jsonl"
    layouts = {
        (c.method.mask.profile.pair_layout, c.method.quant.boost_values)
        for c in map(_compose, _jobs("variants_small"))
    }
    assert layouts == {(lay, bv) for lay in ("rotate_half", "adjacent") for bv in (True, False)}
