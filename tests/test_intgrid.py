from __future__ import annotations

import warnings

import pytest
import torch

from atmc_plugin.engine.intgrid import GridSpec, apply_grid, int_grid_quantize


def _weight(shape=(12, 40), seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("group_size", [-1, 8, 16, 128])
def test_matches_inc_rtn(symmetric: bool, bits: int, group_size: int) -> None:
    from neural_compressor.torch.algorithms.weight_only.utility import quant_tensor

    w = _weight()
    ref = quant_tensor(
        w.clone(), bits=bits, group_size=group_size, scheme="sym" if symmetric else "asym"
    )
    spec = GridSpec(
        bits=bits,
        symmetric=symmetric,
        granularity="channel" if group_size == -1 else "group",
        group_size=None if group_size == -1 else group_size,
        scale_rule="rtn",
    )
    ours, _ = int_grid_quantize(w, spec)
    assert torch.equal(ours, ref)


def test_matches_pytorch_per_channel_symmetric_observer() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization.observer import PerChannelMinMaxObserver

        obs = PerChannelMinMaxObserver(
            ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric
        )
    w = _weight((16, 3, 3, 3))
    obs(w)
    scale, zero = obs.calculate_qparams()
    ref = torch.fake_quantize_per_channel_affine(w, scale, zero.int(), 0, -128, 127)
    ours, params = int_grid_quantize(w, GridSpec(bits=8, granularity="channel", scale_rule="pt2e"))
    assert torch.allclose(params[0][0], scale)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_zeros_stay_zero_idempotent_and_frozen(granularity: str, symmetric: bool) -> None:
    w = _weight((8, 36))
    w[w.abs() < 0.7] = 0
    spec = GridSpec(
        bits=4,
        symmetric=symmetric,
        granularity=granularity,
        group_size=10 if granularity == "group" else None,
    )
    q, params = int_grid_quantize(w, spec)
    assert torch.all(q[w == 0] == 0)
    q2, _ = int_grid_quantize(q, spec)
    assert torch.allclose(q, q2, atol=1e-6)
    assert torch.equal(apply_grid(q, spec, params), q)
    if granularity == "tensor":
        assert torch.unique(q[q != 0]).numel() <= 2**4
