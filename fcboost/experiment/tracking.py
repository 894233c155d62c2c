"""Experiment tracking: a no-op logger and a W&B logger behind one small interface.

W&B runs offline by default (``wandb sync`` later); ``logger=none`` gives :class:`NullTracker`.
Every W&B call is guarded: if W&B is missing, misconfigured or fails, a warning is printed and the
job goes on; local results are written before anything is sent to W&B.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


class NullTracker:
    """Does nothing (tests, ``logger=none``)."""

    run_dir: str | None = None

    def log_summary(self, metrics: dict) -> None:
        pass

    def log_table(self, name: str, rows: list[dict]) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker(NullTracker):
    """One W&B run: name ``{task}-{method}-s{seed}``, group ``{model}/{task}/{method}``, job_type = method."""

    def __init__(
        self,
        project: str,
        name: str,
        group: str,
        job_type: str,
        config: dict,
        mode: str = "offline",
        entity: str | None = None,
        dir: str | None = None,
        tags: list[str] | None = None,
    ):
        self.run = None
        try:
            import wandb

            if dir:
                os.makedirs(dir, exist_ok=True)
            self.run = wandb.init(
                project=project,
                entity=entity,
                name=name,
                group=group,
                job_type=job_type,
                config=config,
                mode=mode,
                dir=dir,
                tags=tags,
                reinit="finish_previous",
            )
            self.run_dir = os.path.dirname(self.run.dir) if self.run is not None else None
        except Exception as e:  # noqa: BLE001 - W&B must never break a job
            log.warning("W&B unavailable (%s: %s); results are kept locally only", type(e).__name__, e)
            self.run = None

    def _guard(self, what: str, fn) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            log.warning("W&B %s failed (%s: %s); local results are unaffected", what, type(e).__name__, e)

    def log_summary(self, metrics: dict) -> None:
        def _do():
            import json

            self.run.log(dict(metrics))
            self.run.summary.update(dict(metrics))
            # Plain-file copies in the run's files dir (synced with it; readable without W&B's binary log).
            with open(os.path.join(self.run.dir, "fcboost-summary.json"), "w") as f:
                json.dump(dict(metrics), f)
            with open(os.path.join(self.run.dir, "fcboost-config.json"), "w") as f:
                json.dump(dict(self.run.config), f, default=str)

        self._guard("summary", _do)

    def log_table(self, name: str, rows: list[dict]) -> None:
        def _do():
            import pandas as pd
            import wandb

            df = pd.json_normalize(rows) if rows else pd.DataFrame()
            df = df.map(lambda v: v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
            self.run.log({name: wandb.Table(dataframe=df)})

        self._guard("table", _do)

    def finish(self) -> None:
        self._guard("finish", lambda: self.run.finish())
        self.run = None


def make_tracker(logger_cfg: dict, name: str, group: str, job_type: str, config: dict) -> NullTracker:
    """A tracker for ``logger_cfg`` (``kind``: ``none`` or ``wandb``)."""
    kind = logger_cfg.get("kind", "none")
    if kind == "none":
        return NullTracker()
    if kind == "wandb":
        return WandbTracker(
            logger_cfg.get("project", "fcboost"),
            name,
            group,
            job_type,
            config,
            mode=logger_cfg.get("mode", "offline"),
            entity=logger_cfg.get("entity"),
            dir=logger_cfg.get("dir"),
        )
    raise ValueError(f"logger.kind={kind!r} is unknown; expected 'none' or 'wandb'")
