"""Every config group composes and instantiates; typos, wrong types and unknown names fail at compose time."""

from __future__ import annotations

import shutil

import pytest
from exp_helpers import CONF, compose
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from fcboost.experiment.methods import build_quant_config, mask_spec
from fcboost.masks.profile import MaskSpec
from fcboost.quant.config import KVQuantConfig

GROUPS = {
    g: sorted(p.stem for p in (CONF / g).glob("*.yaml"))
    for g in ("model", "method", "task", "logger", "profile")
}
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if not p.stem.startswith("_"))


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_group_option_composes(group, option):
    cfg = compose([f"{group}={option}"])
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # nothing left unset
    assert isinstance(build_quant_config(cfg.method), KVQuantConfig)
    if group in ("model", "method", "task"):
        assert cfg[group].name == option


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name):
    cfg = compose([f"experiment={name}"])
    OmegaConf.to_container(cfg, resolve=True)


def test_groups_are_complete():
    assert set(GROUPS["model"]) >= {
        "smollm2-135m",
        "qwen3-8b",
        "qwen3-4b",
        "llama-3.1-8b",
        "tiny-qwen3",
        "tiny-llama",
        "qwen3-8b-random",
    }
    assert set(GROUPS["method"]) == {
        "fp16",
        "kivi",
        "kitty",
        "fcboost",
        "random_mask",
        "magnitude_mask",
        "energy_mask",
    }
    assert set(GROUPS["task"]) == {"gsm8k", "aime24", "aime25", "fidelity", "perplexity"}
    assert set(GROUPS["logger"]) == {"wandb", "none"}


@pytest.mark.parametrize(
    "method,expected",
    [
        ("fp16", KVQuantConfig.fp16()),
        ("kivi", KVQuantConfig.kivi()),
        ("kitty", KVQuantConfig.kitty(n_boost=16)),
        ("fcboost", KVQuantConfig.static(boost_values=True)),
        ("random_mask", KVQuantConfig.static(boost_values=True)),
        ("magnitude_mask", KVQuantConfig.static(boost_values=True)),
    ],
)
def test_methods_map_onto_presets(method, expected):
    assert build_quant_config(compose([f"method={method}"]).method) == expected


@pytest.mark.parametrize(
    "method,kind", [("fcboost", "ca"), ("magnitude_mask", "magnitude"), ("energy_mask", "energy")]
)
def test_profiled_methods_carry_a_mask_spec(method, kind):
    spec = mask_spec(compose([f"method={method}", "profile=paper"]).method)
    assert spec == MaskSpec(
        method=kind,
        n_pairs=8,
        pair_layout="rotate_half",
        data="wikitext-2/train.txt",  # the authors calibrate on WikiText-2 raw train
        n_sequences=16,
        seq_len=8192,
        min_tokens=512,
        n_positions=512,
        top_k=256,
    )


def test_random_mask_carries_its_seed():
    cfg = compose(["method=random_mask", "method.mask.seed=7"])
    assert cfg.method.mask.source == "random" and cfg.method.mask.seed == 7


@pytest.mark.parametrize(
    "override,key,value",
    [
        ("seed=abc", "seed", "abc"),
        ("task.limit=abc", "limit", "abc"),
        ("task.batch_size=1.5", "batch_size", "1.5"),
    ],
)
def test_wrong_types_fail_at_compose_time(override, key, value):
    compose(["task=gsm8k", override.split("=")[0] + "=3"])  # the right type composes
    with pytest.raises(ConfigCompositionException) as e:
        compose(["task=gsm8k", override])
    msg = f"{e.value} {e.value.__cause__}"
    assert key in msg and value in msg


@pytest.mark.parametrize("group", ["method", "task", "model"])
def test_unknown_names_list_the_valid_ones(group):
    with pytest.raises(MissingConfigException) as e:
        compose([f"{group}=nosuch"])
    msg = str(e.value)
    assert "nosuch" in msg
    for option in GROUPS[group]:
        assert option in msg


def test_typo_in_a_yaml_names_the_key(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "method" / "typo.yaml").write_text(
        "defaults:\n  - /schema/method@_here_: method\n  - _self_\nname: typo\nquant:\n  key_bitz: 2\n"
    )
    with pytest.raises(ConfigCompositionException) as e:
        compose(["method=typo"], config_dir=conf)
    assert "key_bitz" in f"{e.value} {e.value.__cause__}"
    with pytest.raises(ConfigCompositionException, match="key_bitz"):
        compose(["method.quant.key_bitz=2"])


@pytest.mark.parametrize(
    "launcher,target",
    [
        ("joblib", "JoblibLauncher"),
        ("submitit_slurm", "SlurmLauncher"),
        ("submitit_local", "LocalLauncher"),
        ("slurm", "SlurmLauncher"),
        ("local_gpus", "JoblibLauncher"),
    ],
)
def test_launchers_compose(launcher, target):
    cfg = compose([f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)


def test_paths_follow_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FCBOOST_HOME", str(tmp_path))
    monkeypatch.setenv("FCBOOST_DATA", "/data/here")
    cfg = compose()
    assert cfg.paths.results_dir == f"{tmp_path}/results" and cfg.paths.mask_dir == f"{tmp_path}/masks"
    assert cfg.paths.data == "/data/here"
