"""conf/experiment/*: every experiment composes, and the paper's settings are what the sweeps run."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from fcboost.experiment.schema import register

CONF = Path(__file__).parents[2] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _compose(overrides):
    register()
    GlobalHydra.instance().clear()  # other test modules keep Hydra initialized between tests
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
    for job in jobs[-1:]:  # the last job of the sweep (every sweep value is composed in _jobs via params)
        cfg = _compose(job)
        OmegaConf.to_container(cfg.task, resolve=True)  # interpolations resolve


def test_table1_is_the_papers_grid():
    jobs = _jobs("table1")
    grid = {tuple(o.split("=", 1)[1] for o in job[1:]) for job in jobs}
    assert grid == {
        (m, t, s) for m in ("kivi", "kitty", "fcboost") for t in ("aime24", "aime25") for s in "012"
    }
    for method in ("kivi", "kitty", "fcboost"):
        cfg = _compose(["experiment=table1", f"method={method}", "task=aime25", "seed=2"])
        assert cfg.model.name == "qwen3-8b" and cfg.task.name == "aime25" and cfg.task.max_new_tokens == 32768
        assert (cfg.task.temperature, cfg.task.top_p, cfg.task.top_k) == (0.6, 0.95, 20)
        if method == "kitty":
            assert cfg.method.quant.n_boost == 16  # K = 16
        if method == "fcboost":
            assert cfg.method.mask.profile.n_pairs == 8 and cfg.method.quant.boost_bits == 4  # F = 8


def test_table2_random_mask_seeds():
    jobs = _jobs("table2")
    assert {tuple(o.split("=", 1)[1] for o in job[1:]) for job in jobs} == {
        (s, t, "0") for s in ("42", "123", "456") for t in ("aime24", "aime25")
    }
    cfg = _compose(jobs[-1])
    assert (cfg.method.name, cfg.method.mask.seed, cfg.method.mask.n_pairs) == ("random_mask", 456, 8)


def test_small_experiments_share_settings(monkeypatch):
    monkeypatch.setenv("FCBOOST_DATA", "/data")
    a = _compose(["experiment=table1_small", "method=fcboost"])
    b = _compose(["experiment=variants_small"])
    assert a.model.name == b.model.name == "smollm2-135m"
    assert a.method.mask.profile == b.method.mask.profile  # same CA mask (same cache key)
    assert a.task.limit == 2 and a.task.data_file == "/data/gsm8k/train.jsonl"
    layouts = {
        (c.method.mask.profile.pair_layout, c.method.quant.boost_values)
        for c in map(_compose, _jobs("variants_small"))
    }
    assert layouts == {(lay, bv) for lay in ("rotate_half", "adjacent") for bv in (True, False)}
