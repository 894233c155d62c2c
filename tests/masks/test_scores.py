"""Magnitude and energy observers against hand computation on captured q/k; mask invariants."""

from __future__ import annotations

import pytest
import torch

from fcboost.masks.capture import run_capture
from fcboost.masks.mask import ChannelMask, mask_from_pair_scores
from fcboost.masks.scores import EnergyObserver, MagnitudeObserver, make_observer


@pytest.fixture(scope="module")
def captured(tiny_qwen3):
    out: dict[int, list] = {0: [], 1: []}
    chunks = [torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(n)) for n in (40, 25)]
    run_capture(
        tiny_qwen3.model, chunks, lambda i, q, k: out[i].append((q.clone(), k.clone())), progress=False
    )
    return out


def _feed(obs, captured):
    for i, seqs in captured.items():
        for q, k in seqs:
            obs.update(i, q, k)
    return obs.finalize()


def test_magnitude_matches_hand_computation(captured):
    d = 32
    for layout in ("rotate_half", "adjacent"):
        scores = _feed(MagnitudeObserver(2, 2, layout), captured)  # (L, Hkv, 16)
        for layer in range(2):
            k_all = torch.cat([k[0] for _, k in captured[layer]], dim=1)  # (Hkv, T1+T2, D)
            mean_abs = k_all.abs().mean(1)  # (Hkv, D)
            for i in range(d // 2):
                a, b = (i, i + d // 2) if layout == "rotate_half" else (2 * i, 2 * i + 1)
                torch.testing.assert_close(scores[layer, :, i], (mean_abs[:, a] + mean_abs[:, b]) / 2)


def test_energy_matches_hand_computation(captured):
    scores = _feed(EnergyObserver(2, 2, "rotate_half"), captured)
    for layer in range(2):
        q_all = torch.cat([q[0] for q, _ in captured[layer]], dim=1)  # (Hq, T, D)
        k_all = torch.cat([k[0] for _, k in captured[layer]], dim=1)  # (Hkv, T, D)
        for h in range(2):
            for i in (0, 7, 15):
                eq = (
                    sum(
                        (q_all[hq, :, i] ** 2 + q_all[hq, :, i + 16] ** 2).mean() for hq in (2 * h, 2 * h + 1)
                    )
                    / 2
                )
                ek = (k_all[h, :, i] ** 2 + k_all[h, :, i + 16] ** 2).mean()
                torch.testing.assert_close(scores[layer, h, i], 0.5 * (eq + ek))


def test_observer_without_data_and_unknown_method():
    with pytest.raises(RuntimeError, match=r"no q/k observed for layers \[0, 1\]"):
        MagnitudeObserver(2, 2).finalize()
    with pytest.raises(ValueError, match="method='kurtosis' has no observer"):
        make_observer("kurtosis", 2, 2, "rotate_half")


@pytest.mark.parametrize("layout", ["rotate_half", "adjacent"])
def test_mask_from_scores_invariants(layout):
    scores = torch.rand(3, 4, 32, generator=torch.Generator().manual_seed(0))  # (L, H, d/2), d = 64
    mask = ChannelMask.from_pair_scores(scores, 5, layout)
    assert bool((mask.mask.sum(-1) == 10).all())  # exactly 2F channels per (layer, KV head)
    top = scores.topk(5, dim=-1).indices
    for layer in range(3):
        for h in range(4):
            chosen = set(top[layer, h].tolist())
            for i in range(32):
                a, b = (i, i + 32) if layout == "rotate_half" else (2 * i, 2 * i + 1)
                assert bool(mask.mask[layer, h, a]) == bool(mask.mask[layer, h, b]) == (i in chosen)
    if layout == "rotate_half":
        assert torch.equal(mask.mask[..., :32], mask.mask[..., 32:])  # channel i set iff i + d/2 set
    with pytest.raises(ValueError, match=r"n_pairs=33 must be in \[1, head_dim/2=32\]"):
        mask_from_pair_scores(scores, 33, layout)
