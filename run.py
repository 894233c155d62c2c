"""Hydra entry point: ``python run.py [overrides]``; one job per (model, method, task, seed).

python run.py                                        # SmolLM2, FCBoost, a quick fidelity check
python run.py method=kivi,kitty,fcboost task=gsm8k task.limit=20 seed=0,1 -m
"""

import hydra
from omegaconf import DictConfig

from fcboost.experiment.schema import register

register()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from fcboost.experiment.pipeline import run

    record = run(cfg)
    metrics = record.get("metrics") or {}
    return next(iter(metrics.values()), None)


if __name__ == "__main__":
    main()
