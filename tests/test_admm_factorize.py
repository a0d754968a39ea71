from __future__ import annotations

import torch
from torch import nn

from atmc_plugin.engine.admm import ADMMState
from atmc_plugin.engine.factorize import factor_parameters, factorize, is_factorized


def test_admm_update_and_residuals() -> None:
    w = {"a": torch.tensor([0.3, -1.2, 2.0])}
    state = ADMMState(rho=0.1)
    state.init(w, lambda n, t: t.round())
    assert torch.equal(state.z["a"], torch.tensor([0.0, -1.0, 2.0]))
    pen = state.penalty(w)
    assert torch.allclose(pen, torch.tensor(0.05 * (0.3**2 + 0.2**2)))
    stats = state.update(w, lambda n, t: t.round())
    assert torch.allclose(state.u["a"], torch.tensor([0.3, -0.2, 0.0]))
    assert stats["primal_residual"] > 0


def test_admm_slicing_and_state_dict() -> None:
    state = ADMMState(rho=0.5)
    state.init({"w": torch.arange(12.0).reshape(4, 3)}, lambda n, t: t)
    state.index_select("w", 0, torch.tensor([0, 2]))
    assert state.z["w"].tolist() == [[0, 1, 2], [6, 7, 8]]
    assert state.u["w"].shape == (2, 3)
    other = ADMMState(rho=1.0)
    other.load_state_dict(state.state_dict())
    assert other.rho == 0.5 and torch.equal(other.z["w"], state.z["w"])


def test_penalty_is_differentiable_in_w_only() -> None:
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    state = ADMMState(rho=1.0)
    state.init({"w": w}, lambda n, t: torch.zeros_like(t))
    state.penalty({"w": w}).backward()
    assert torch.allclose(w.grad, torch.tensor([1.0, 2.0]))


def test_factorization_both_orientations() -> None:
    torch.manual_seed(0)
    for module in (nn.Conv2d(3, 16, 3), nn.Conv2d(16, 4, 3), nn.Linear(20, 5), nn.Linear(5, 20)):
        x = (
            torch.randn(2, module.weight.shape[1], 6, 6)
            if isinstance(module, nn.Conv2d)
            else torch.randn(2, module.in_features)
        )
        before = module(x)
        factorize(module)
        assert is_factorized(module)
        assert torch.allclose(module(x), before, atol=1e-5)
        left, right, sparse = factor_parameters(module)
        out, fan_in = module.weight.shape[0], module.weight[0].numel()
        if out >= fan_in:
            assert left.shape == (out, fan_in) and right.shape == (fan_in, fan_in)
        else:
            assert left.shape == (out, out) and right.shape == (out, fan_in)
        assert sparse.shape == (out, fan_in) and not sparse.any()
        module(x).sum().backward()
        assert left.grad is not None and sparse.grad is not None


def test_merged_state_dict_gives_the_deployed_model_and_leaves_the_original_working() -> None:
    from atmc_plugin.app.models import DigitsCNN
    from atmc_plugin.engine.factorize import factorize, merged_state_dict

    torch.manual_seed(0)
    model = DigitsCNN(width=4)
    for module in (model.features[0], model.features[3], model.fc):
        factorize(module)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    x = torch.rand(3, 1, 8, 8)
    plain = DigitsCNN(width=4).eval()
    plain.load_state_dict(merged_state_dict(model))  # strict: exactly the plain keys
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), rtol=1e-5, atol=1e-6)
        model(x)  # the factorized original still works
