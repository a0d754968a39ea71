from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atmc_plugin.engine.codebook import codebook_quantize, companding_init, sorted_values


def dense_lloyd(x: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
    """Reference: the original method, an N x K distance matrix, until assignments settle."""
    centres = torch.cat([init.double(), torch.zeros(1, dtype=torch.float64)])
    xd = x.double()
    assign = None
    for _ in range(10_000):
        new = torch.argmin((xd[:, None] - centres[None, :]) ** 2, dim=1)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        for j in range(len(centres) - 1):  # the last centre is the frozen zero
            members = xd[assign == j]
            if members.numel():
                centres[j] = members.mean()
    return centres[assign].float()


@st.composite
def weights(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    n = draw(st.integers(1, 400))
    x = torch.randn(n, generator=g) * draw(st.sampled_from([1e-3, 1.0, 50.0]))
    if draw(st.booleans()):
        x[torch.rand(n, generator=g) < 0.5] = 0.0  # already sparse
    return x


@settings(max_examples=80, deadline=None)
@given(weights(), st.integers(1, 5))
def test_at_most_2b_nonzero_values_and_zeros_stay_zero(x, bits) -> None:
    q, centres = codebook_quantize(x, bits)
    nonzero = q[q != 0]
    assert torch.unique(nonzero).numel() <= 2**bits
    assert torch.all(q[x == 0] == 0)
    assert (centres == 0).any()


@settings(max_examples=80, deadline=None)
@given(weights(), st.integers(1, 5))
def test_projection_is_idempotent(x, bits) -> None:
    q, _ = codebook_quantize(x, bits)
    q2, _ = codebook_quantize(q, bits)
    assert torch.equal(q, q2)


@settings(max_examples=60, deadline=None)
@given(weights(), st.integers(1, 4))
def test_error_never_worse_than_dense_lloyd_from_same_start(x, bits) -> None:
    nonzero = x[x != 0]
    if nonzero.numel() == 0:
        return
    init = companding_init(sorted_values(nonzero), 2**bits)
    if init.numel() == 0:
        return
    ours, _ = codebook_quantize(x, bits, init=init)
    ref = dense_lloyd(nonzero, init)
    err_ours = float(((ours[x != 0] - nonzero).double() ** 2).sum())
    err_ref = float(((ref - nonzero).double() ** 2).sum())
    assert err_ours <= err_ref * (1 + 1e-5) + 1e-12


@settings(max_examples=40, deadline=None)
@given(weights(), st.integers(1, 4))
def test_mask_zeroes_outside_support(x, bits) -> None:
    mask = torch.arange(x.numel()) % 2 == 0
    q, _ = codebook_quantize(x, bits, mask=mask)
    assert torch.all(q[~mask] == 0)


def test_few_distinct_values_are_kept_exactly() -> None:
    x = torch.tensor([0.5, -0.25, 0.5, 0.0, 3.0])
    q, centres = codebook_quantize(x, 2)
    assert torch.equal(q, x)
    assert centres.tolist() == [-0.25, 0.0, 0.5, 3.0]


def test_large_tensor_uses_full_codebook() -> None:
    x = torch.randn(64, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    q, _ = codebook_quantize(x, 3)
    assert q.shape == x.shape
    assert torch.unique(q[q != 0]).numel() == 8
    assert float(((q - x) ** 2).mean()) < 0.05  # 8 levels of a unit Gaussian
