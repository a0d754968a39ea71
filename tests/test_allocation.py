"""Budget allocation across layers, the per-layer guard and the gradual budget schedule."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from atmc_plugin import ATMC, ATMCConfig, ConfigError, ConstraintConfig
from atmc_plugin.app.datasets import load_digits
from atmc_plugin.app.models import DigitsCNN
from atmc_plugin.engine.allocation import guarded_topk_masks, lamp_scores, scheduled_budget
from atmc_plugin.layers import following_norms

CONVS = ("features.0", "features.3", "features.7")


def test_lamp_scores_are_scale_free_and_top_is_one() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 5)
    w[0, 0] = 0.0
    s = lamp_scores(w)
    assert torch.allclose(s, lamp_scores(1e-3 * w))
    assert s.max() == 1.0 and s.flatten().argmax() == w.abs().flatten().argmax()
    assert s[0, 0] == 0.0
    # a larger magnitude never scores lower inside one tensor
    order = w.abs().flatten().argsort()
    assert bool((s.flatten()[order].diff() >= 0).all())
    assert not lamp_scores(torch.zeros(3, 3)).any()


def test_guard_keeps_a_minimum_per_tensor_within_the_budget() -> None:
    big, tiny = torch.ones(100) * 5, torch.rand(20) * 1e-3 + 1e-4
    masks, _ = guarded_topk_masks([big, tiny], 30, min_per_tensor=4)
    assert int(masks[1].sum()) == 4 and int(masks[0].sum()) == 26
    # the guards alone exceed the budget: an equal share each
    masks, _ = guarded_topk_masks([big, tiny, big], 6, min_per_tensor=4)
    assert [int(m.sum()) for m in masks] == [2, 2, 2]
    # guard off: plain global top-k starves the small tensor
    masks, _ = guarded_topk_masks([big, tiny], 30, min_per_tensor=0)
    assert int(masks[1].sum()) == 0


def test_cubic_schedule_anneals_from_dense_to_the_target() -> None:
    budgets = [scheduled_budget(10, 1000, t, 100) for t in range(0, 130, 10)]
    assert budgets[0] == 1000 and budgets[-1] == 10 and budgets[10] == 10
    assert budgets == sorted(budgets, reverse=True)
    # cubic: most of the pruning happens early
    assert budgets[3] < 1000 - 0.6 * 990
    assert scheduled_budget(10, 1000, 0, 100, "constant") == 10
    assert scheduled_budget(10, 1000, 5, 0) == 10


@pytest.mark.parametrize(
    ("key", "value"),
    [("allocation", "size"), ("min_per_layer", -1), ("schedule", "linear"), ("ramp_steps", 1.5)],
)
def test_bad_values_are_refused(key, value) -> None:
    with pytest.raises(ConfigError, match=key):
        ConstraintConfig(density=0.1, **{key: value})


def test_norms_found_by_module_order() -> None:
    model = DigitsCNN(width=4)
    assert following_norms(model, [*CONVS, "fc"]) == {
        "features.0": "features.1",
        "features.3": "features.4",
        "features.7": "features.8",
    }


def _shrink_layer(model: DigitsCNN, factor: float) -> None:
    """BatchNorm undoes a conv's scale: shrink conv 3 and its statistics (same function)."""
    conv, bn = model.features[7], model.features[8]
    with torch.no_grad():
        conv.weight.mul_(factor)
        bn.running_mean.mul_(factor)
        bn.running_var.mul_(factor**2)
        bn.eps *= factor**2


def _masks_after_one_projection(
    model: nn.Module, allocation: str, guard: int = 4
) -> dict[str, int]:
    c = ConstraintConfig(
        density=0.01, allocation=allocation, schedule="constant", min_per_layer=guard
    )
    atmc = ATMC(copy.deepcopy(model), ATMCConfig(attack=None, constraint=c))
    atmc.project_sparsity()
    return {n: int(torch.count_nonzero(p)) for n, p in atmc.parameters().items()}


@pytest.mark.parametrize("allocation", ["lamp", "effective"])
def test_scale_invariant_allocations_ignore_a_scale_batchnorm_undoes(allocation) -> None:
    torch.manual_seed(0)
    model = DigitsCNN(width=8).eval()
    x = torch.rand(4, 1, 8, 8)
    reference = DigitsCNN(width=8).eval()
    reference.load_state_dict(model.state_dict())
    _shrink_layer(model, 0.01)
    assert torch.allclose(model(x), reference(x), atol=1e-5)
    assert _masks_after_one_projection(model, allocation) == _masks_after_one_projection(
        reference, allocation
    )
    # the paper's magnitude ranking is fooled by the same rescaling: without the guard the
    # shrunk layer is emptied, which disconnects the network
    assert _masks_after_one_projection(model, "magnitude", guard=0)["features.7.weight"] == 0
    assert _masks_after_one_projection(model, "magnitude")["features.7.weight"] == 4


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _fit(model, x, y, steps, opt, gen, penalty=None) -> None:
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(y), (64,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        if penalty is not None:
            loss = loss + penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_batchnorm_cnn_at_density_one_percent_keeps_every_layer_and_learns() -> None:
    """The collapse of plain global magnitude top-k (issue 10): with the defaults a BatchNorm
    CNN at 1% density keeps every layer connected and stays far above chance, even when a
    layer's weights are small (as weight decay makes them under BatchNorm)."""
    torch.manual_seed(0)
    x_tr, y_tr, x_te, y_te = load_digits(seed=0)
    gen = torch.Generator().manual_seed(0)
    model = DigitsCNN(width=16)
    _fit(model, x_tr, y_tr, 150, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), gen)
    _shrink_layer(model, 0.02)
    assert _accuracy(model, x_te, y_te) > 0.8
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    constraint = ConstraintConfig(density=0.01, ramp_steps=60)
    atmc = ATMC(model, ATMCConfig(attack=None, constraint=constraint), optimizer=opt)
    _fit(model, x_tr, y_tr, 100, opt, gen)
    report = atmc.finalize()
    _fit(model, x_tr, y_tr, 40, opt, gen)
    per_layer = {t.name: t.nnz for t in atmc.report().tensors}
    assert report.nnz <= atmc.target_budget
    assert min(per_layer.values()) >= constraint.min_per_layer, per_layer
    assert _accuracy(model, x_te, y_te) > 0.5, per_layer


def test_the_same_rules_through_wrap() -> None:
    tp = pytest.importorskip("torch_pruning")
    import atmc_plugin

    model = DigitsCNN(width=8)
    pruner = tp.pruner.BasePruner(
        model,
        torch.rand(1, 1, 8, 8),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.25,
        iterative_steps=1,
        ignored_layers=[model.fc],
    )
    constraint = ConstraintConfig(density=0.02, ramp_steps=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    wrapped = atmc_plugin.wrap(
        pruner, ATMCConfig(attack=None, constraint=constraint), optimizer=opt
    )
    wrapped.step()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    budgets = []
    for _ in range(12):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        budgets.append(wrapped.atmc.budget)
    assert budgets == sorted(budgets, reverse=True) and budgets[-1] == wrapped.target_budget
    report = wrapped.finalize().elementwise
    assert min(t.nnz for t in report.tensors) >= constraint.min_per_layer


class _PerLayerUniform:
    """A plugin's allocation: the same fraction of every tensor (ERK-like quotas)."""

    def __init__(self, config: ConstraintConfig) -> None:
        from atmc_plugin.projection import ATMCProjection

        self.base = ATMCProjection(config)
        self.seen: list[int] = []

    def sparsity_masks(self, tensors, budget):
        self.seen.append(budget)
        total = sum(t.numel() for t in tensors)
        masks = []
        for t in tensors:
            keep = max(1, budget * t.numel() // total)
            flat = t.abs().flatten()
            mask = torch.zeros_like(flat, dtype=torch.bool)
            mask[flat.topk(keep).indices] = True
            masks.append(mask.view_as(t))
        return masks, 0.0

    def quantize(self, tensor, mask):
        return self.base.quantize(tensor, mask)

    def snap(self, tensor, qstate):
        return self.base.snap(tensor, qstate)


def test_a_plugin_supplies_its_own_allocation_through_the_projection_hook() -> None:
    from atmc_plugin import hookimpl
    from atmc_plugin.plugins import get_plugin_manager

    built: list[_PerLayerUniform] = []

    class Plugin:
        @hookimpl
        def atmc_build_projection(self, config):
            built.append(_PerLayerUniform(config))
            return built[-1]

    pm = get_plugin_manager(entry_points=False)
    pm.register(Plugin())
    model = DigitsCNN(width=8)
    constraint = ConstraintConfig(density=0.1, schedule="constant")
    atmc = ATMC(model, ATMCConfig(attack=None, constraint=constraint), plugin_manager=pm)
    atmc.project_sparsity()
    assert built[0].seen == [atmc.target_budget]
    per_layer = {n: int(torch.count_nonzero(p)) / p.numel() for n, p in atmc.parameters().items()}
    assert all(abs(f - 0.1) < 0.02 for f in per_layer.values()), per_layer
