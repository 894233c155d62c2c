"""Pictures of pair scores: a (layers x pairs) heatmap per KV head with the chosen pairs marked, and the
mean score by pair index (frequency; pair 0 = highest). matplotlib with the Agg backend (no display)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fcboost.masks.mask import ChannelMask, pairs_view


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pair_scores_of(mask: ChannelMask) -> tuple[str, torch.Tensor]:
    """(name, ``(L, Hkv, d/2)``) of the KV-head pair scores stored in ``mask``."""
    for name, value in mask.scores.items():
        if name.endswith("_kv"):
            return name, value.float()
    raise ValueError(f"mask {mask.id} holds no '<method>_kv' pair scores (has {sorted(mask.scores)})")


def chosen_pairs(mask: ChannelMask) -> torch.Tensor:
    """bool ``(L, Hkv, d/2)``: pairs whose two channels are set."""
    return pairs_view(mask.mask, mask.pair_layout).all(-1)


def plot_heatmap(mask: ChannelMask, path: str | os.PathLike, title: str | None = None) -> Path:
    """One panel per KV head: pair scores (layers x pairs); chosen pairs marked with a dot."""
    plt = _plt()
    name, scores = pair_scores_of(mask)
    chosen = chosen_pairs(mask)
    n_layers, n_kv, n_pairs = scores.shape
    fig, axes = plt.subplots(
        1,
        n_kv,
        figsize=(min(4 + 0.09 * n_pairs * n_kv, 24), 1.5 + 0.18 * n_layers),
        squeeze=False,
        sharey=True,
    )
    vmax = float(scores.max())
    for h, ax in enumerate(axes[0]):
        im = ax.imshow(scores[:, h].numpy(), aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=vmax)
        ly, px = torch.nonzero(chosen[:, h], as_tuple=True)
        ax.scatter(px.numpy(), ly.numpy(), s=6, c="red", marker="o", linewidths=0)
        ax.set_title(f"KV head {h}")
        ax.set_xlabel("pair index (0 = highest frequency)")
    axes[0][0].set_ylabel("layer")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=name)
    fig.suptitle(title or f"{name} ({mask.pair_layout}, F={mask.n_pairs}); red = chosen")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_by_frequency(mask: ChannelMask, path: str | os.PathLike, title: str | None = None) -> Path:
    """Mean pair score over layers and KV heads by pair index, and how often each pair is chosen."""
    plt = _plt()
    name, scores = pair_scores_of(mask)
    chosen = chosen_pairs(mask).float()
    n_pairs = scores.shape[-1]
    x = torch.arange(n_pairs).numpy()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    mean, std = scores.mean(dim=(0, 1)), scores.std(dim=(0, 1))
    ax.plot(x, mean.numpy(), color="C0", label=f"mean {name}")
    ax.fill_between(x, (mean - std).numpy(), (mean + std).numpy(), color="C0", alpha=0.2)
    ax.set_xlabel("pair index (0 = highest frequency)")
    ax.set_ylabel(name)
    ax2 = ax.twinx()
    ax2.bar(
        x,
        chosen.mean(dim=(0, 1)).numpy(),
        color="C3",
        alpha=0.4,
        label="share of (layer, KV head) choosing it",
    )
    ax2.set_ylabel("chosen share")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", fontsize=8)
    ax.set_title(title or f"{name} by frequency ({mask.pair_layout}, F={mask.n_pairs})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def save_pictures(mask: ChannelMask, artifact: str | os.PathLike) -> list[Path]:
    """Both pictures next to ``artifact`` (``<stem>.heatmap.png``, ``<stem>.by_frequency.png``)."""
    stem = Path(artifact).with_suffix("")
    return [plot_heatmap(mask, f"{stem}.heatmap.png"), plot_by_frequency(mask, f"{stem}.by_frequency.png")]
