from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atmc_plugin.engine.sparsity import global_topk_masks, kth_largest


@st.composite
def tensor_lists(draw):
    n = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    levels = draw(st.sampled_from([None, 3]))  # few levels -> many ties
    out = []
    for _ in range(n):
        shape = (draw(st.integers(1, 6)), draw(st.integers(1, 7)))
        t = torch.randn(shape, generator=g)
        if levels:
            t = torch.round(t * levels) / levels
        out.append(t)
    return out


@settings(max_examples=80, deadline=None)
@given(tensor_lists(), st.floats(0.01, 1.0))
def test_exact_budget_and_largest_kept(tensors, frac) -> None:
    total = sum(t.numel() for t in tensors)
    k = max(1, int(frac * total))
    masks, threshold = global_topk_masks(tensors, k)
    kept = sum(int(m.sum()) for m in masks)
    assert kept == min(k, total)
    mags = torch.cat([t.abs().reshape(-1) for t in tensors])
    keep = torch.cat([m.reshape(-1) for m in masks])
    if k < total:
        # Everything kept is at least as large as everything dropped.
        assert mags[keep].min() >= mags[~keep].max()
        assert float(mags[keep].min()) == threshold


@settings(max_examples=50, deadline=None)
@given(tensor_lists(), st.floats(0.01, 1.0))
def test_projection_is_idempotent_and_deterministic(tensors, frac) -> None:
    k = max(1, int(frac * sum(t.numel() for t in tensors)))
    masks, _ = global_topk_masks(tensors, k)
    projected = [t * m for t, m in zip(tensors, masks, strict=True)]
    again, _ = global_topk_masks(projected, k)
    for p, m in zip(projected, again, strict=True):
        assert torch.equal(p * m, p)
    twice, _ = global_topk_masks([t.clone() for t in tensors], k)
    assert all(torch.equal(a, b) for a, b in zip(masks, twice, strict=True))


def test_ties_broken_by_position() -> None:
    a, b = torch.ones(4), torch.ones(4)
    masks, _ = global_topk_masks([a, b], 5)
    assert masks[0].tolist() == [True] * 4
    assert masks[1].tolist() == [True, False, False, False]


def test_kth_largest_matches_sort() -> None:
    x = torch.randn(1000)
    for k in (1, 17, 1000):
        assert float(kth_largest(x, k)) == float(torch.sort(x, descending=True).values[k - 1])
