"""Pictures of the tables: bars with error bars (std over units) per column and method, PNG.

``bar_chart(table, path)`` draws one panel per column of a ``Table`` (accuracy per task, or KL /
top-1 agreement / NLL of the fidelity task) with one bar per row; a row without records gets no bar
and a "—" label, never a zero bar. ``mask_pictures(dirs)`` finds the CA heatmaps the profiling step
saved next to its mask artifacts (``fcboost.masks.plots``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from fcboost.experiment.tables import METRICS, MISSING, Metric, Table


def _plt():
    import matplotlib

    if os.environ.get("MPLBACKEND") is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(table: Table, path: str | Path) -> Path:
    """One panel per column, one bar per row: mean with a std error bar, ``n`` written on the bar."""
    plt = _plt()
    cols = table.columns
    labels = list(table.rows)
    fig, axes = plt.subplots(1, len(cols), figsize=(max(3.2 * len(cols), 4), 3.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, (ax, col) in enumerate(zip(axes[0], cols)):
        metric = METRICS.get(col.metric, Metric(col.metric))
        for i, label in enumerate(labels):
            cell = table.rows[label][j]
            if not cell.n:
                ax.text(i, 0, MISSING, ha="center", va="bottom")
                continue
            err = cell.std if cell.n > 1 else 0.0
            ax.bar(i, cell.mean, yerr=err, capsize=3, color=colors[i % len(colors)])
            ax.text(i, cell.mean + err, f"n={cell.n}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(
            range(len(labels)), [_short(lbl) for lbl in labels], rotation=35, ha="right", fontsize=7
        )
        arrow = "↑" if metric.higher_is_better else "↓"
        ax.set_title(f"{col.header} {arrow}", fontsize=9)
        finite = [c[j].mean + c[j].std for c in table.rows.values() if c[j].n and math.isfinite(c[j].mean)]
        if finite:
            ax.set_ylim(0, max(finite) * 1.15 or 1.0)
    fig.suptitle(table.title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _short(label: str) -> str:
    return label.replace(" (Ours)", "").replace("rotate_half", "rot-half").replace(" (no boost)", "")


def mask_pictures(dirs: Iterable[str | Path]) -> list[Path]:
    """The ``*.heatmap.png`` / ``*.by_frequency.png`` files saved by the profiling step under ``dirs``."""
    out: list[Path] = []
    for d in dirs:
        d = Path(d)
        if d.is_dir():
            out += sorted(d.rglob("*.heatmap.png")) + sorted(d.rglob("*.by_frequency.png"))
    return out


def save_figures(
    df: pd.DataFrame,
    tables: dict[str, Table],
    out_dir: str | Path,
    mask_dirs: Iterable[str | Path] = ("experiments/masks_smollm2", "runs/masks"),
) -> list[Path]:
    """``<out_dir>/<table>.png`` for every table that has at least one value; plus the mask pictures found.

    Returns the PNG paths (the new bar charts, then the existing CA heatmaps) for logging.
    """
    paths = []
    for name, t in tables.items():
        if any(c.n for cells in t.rows.values() for c in cells) and all(
            col.task != "4.4" for col in t.columns
        ):
            paths.append(bar_chart(t, Path(out_dir) / f"{name}.png"))
    return paths + mask_pictures(mask_dirs)
