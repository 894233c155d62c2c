"""CA scores: vectorized == slow loop, random pairs score K/t, positions, and the CA observer."""

from __future__ import annotations

import pytest
import torch

from fcboost.masks.ca import CAObserver, ca_pair_scores, ca_pair_scores_reference, query_positions
from fcboost.masks.capture import run_capture


def test_query_positions_evenly_spaced_in_range():
    pos = query_positions(1000, 10, 64)
    assert pos.tolist()[0] == 65 and pos.tolist()[-1] == 999
    assert len(pos) == 10 and bool((pos.diff() > 0).all())
    assert query_positions(100, 500, 8).tolist() == list(range(9, 100))  # capped at T-K-1 distinct positions
    with pytest.raises(ValueError, match="too short for top_k=64"):
        query_positions(60, 10, 64)


@pytest.mark.parametrize("layout", ["rotate_half", "adjacent"])
@pytest.mark.parametrize("max_elements", [1, 1 << 26])  # one position per chunk / all at once
def test_vectorized_equals_loop_random(layout, max_elements):
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(6, 97, 16, generator=gen)  # (Hq, T, D), 3 query heads per KV head
    k = torch.randn(2, 97, 16, generator=gen)  # (Hkv, T, D)
    pos = query_positions(97, 12, 10)
    fast = ca_pair_scores(q, k, pos, 10, layout, max_elements=max_elements)
    slow = ca_pair_scores_reference(q, k, pos, 10, layout)
    assert fast.shape == (6, 8)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-6)


def test_vectorized_equals_loop_on_tiny_model(tiny_qwen3):
    captured = {}
    ids = torch.randint(0, 256, (80,), generator=torch.Generator().manual_seed(2))
    run_capture(
        tiny_qwen3.model, [ids], lambda i, q, k: captured.__setitem__(i, (q[0], k[0])), progress=False
    )
    pos = query_positions(80, 9, 12)
    for layer, (q, k) in captured.items():
        for layout in ("rotate_half", "adjacent"):
            fast = ca_pair_scores(q, k, pos, 12, layout, max_elements=4000)
            slow = ca_pair_scores_reference(q, k, pos, 12, layout)
            torch.testing.assert_close(fast, slow, rtol=0, atol=1e-6, msg=f"layer {layer} {layout}")


def test_random_pairs_score_k_over_t():
    """A pair carrying (almost) none of the full logit agrees with it by chance: E[CA] = K/t."""
    gen = torch.Generator().manual_seed(3)
    n_heads, seq_len, d, top_k = 4, 400, 64, 16
    scale = torch.ones(d)
    scale[torch.arange(8, 32)] = 1e3  # rotate_half pairs 8..31 carry the full logits
    scale[torch.arange(8, 32) + 32] = 1e3
    q = torch.randn(n_heads, seq_len, d, generator=gen) * scale
    k = torch.randn(n_heads, seq_len, d, generator=gen) * scale
    pos = query_positions(seq_len, 64, top_k)
    ca = ca_pair_scores(q, k, pos, top_k, "rotate_half")  # (Hq, 32)
    chance = float((top_k / pos.double()).mean())
    weak = ca[:, :8].mean()
    # hypergeometric overlap: per-sample std ~0.09, 4*8*64 samples -> std of the mean ~0.002
    assert abs(float(weak) - chance) < 0.01, (float(weak), chance)
    assert float(ca[:, 8:].mean()) > chance + 0.02  # pairs that make up the logits agree more often


def test_ca_observer_groups_query_heads(tiny_qwen3):
    obs = CAObserver(2, 2, "rotate_half", top_k=8, n_positions=16)
    chunks = [torch.randint(0, 256, (50,), generator=torch.Generator().manual_seed(s)) for s in (4, 5)]
    per_seq = []
    run_capture(tiny_qwen3.model, chunks, obs.update, progress=False)
    for ids in chunks:
        one = CAObserver(2, 2, "rotate_half", top_k=8, n_positions=16)
        run_capture(tiny_qwen3.model, [ids], one.update, progress=False)
        one.finalize()
        per_seq.append(one.query_scores)
    kv = obs.finalize()
    torch.testing.assert_close(obs.query_scores, (per_seq[0] + per_seq[1]) / 2)  # mean over sequences
    torch.testing.assert_close(
        kv, obs.query_scores.view(2, 2, 2, 16).mean(2)
    )  # q heads 0,1 -> KV 0; 2,3 -> KV 1
    assert obs.positions_used == [16, 16]
