"""The architectures people compress (ResNet, MobileNet, EfficientNet, ConvNeXt, ViT, BERT),
through Torch-Pruning bare, wrapped with ATMC off, and wrapped with ATMC on (small instances
written here: torchvision does not import on this machine and nothing is downloaded).

For each: widths and values equal to the bare pruner with ATMC off; the optimizer holds
exactly the live parameters (momentum sliced); no untraced slice; with ATMC on, the budget
and the bit width are met after ``finalize`` and ``save_pruned``/``load_pruned`` rebuild a
model with identical outputs.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch
import torch_pruning as tp
from atmc_plugin_adapters.torchpruning import load_pruned, save_pruned
from torch import nn
from torch.nn import functional as F
from tp_models import MobileBlockNet, TinyConvNeXt, TinyEfficientNet, TinyEncoder, TinyViT

import atmc_plugin
from atmc_plugin import ATMCConfig, ConstraintConfig
from atmc_plugin.app.models import CifarResNet


def _images(shape: tuple[int, ...]):
    def make(n: int, g: torch.Generator) -> torch.Tensor:
        return torch.rand(n, *shape, generator=g)

    return make


def _ids(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 50, (n, 12), generator=g)


ZOO: dict[str, tuple[Any, Any]] = {
    "resnet": (lambda: CifarResNet(depth=8, in_channels=3), _images((3, 16, 16))),
    "mobilenet": (MobileBlockNet, _images((3, 8, 8))),
    "efficientnet": (TinyEfficientNet, _images((3, 8, 8))),
    "convnext": (TinyConvNeXt, _images((1, 8, 8))),
    "vit": (TinyViT, _images((1, 8, 8))),
    "bert": (TinyEncoder, _ids),
}


def _pruner(model: nn.Module, example: torch.Tensor) -> Any:
    head = model.head if hasattr(model, "head") else model.fc
    unwrapped = model.unwrapped() if hasattr(model, "unwrapped") else None
    return tp.pruner.MagnitudePruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        iterative_steps=2,
        ignored_layers=[head],
        unwrapped_parameters=unwrapped,
    )


def _sgd_step(model: nn.Module, opt: torch.optim.Optimizer, inputs: Any, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = inputs(8, g), torch.randint(0, 10, (8,), generator=g)
    model.train()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def _assert_optimizer_holds_the_live_parameters(model: nn.Module, opt: Any) -> None:
    live = {id(p) for p in model.parameters()}
    held = [p for group in opt.param_groups for p in group["params"]]
    assert {id(p) for p in held} == live and len(held) == len(live)
    for p in held:
        buffer = opt.state.get(p, {}).get("momentum_buffer")
        assert buffer is None or buffer.shape == p.shape


def _bare_and_wrapped(name: str) -> tuple[Any, ...]:
    """Two identical models of ``name``: one under a bare pruner, one wrapped with ATMC off
    and an SGD-momentum optimizer."""
    build, inputs = ZOO[name]
    torch.manual_seed(0)
    bare_model = build()
    model = copy.deepcopy(bare_model)
    example = inputs(1, torch.Generator().manual_seed(0))
    bare = _pruner(bare_model, example)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    wrapped = atmc_plugin.wrap(_pruner(model, example), ATMCConfig(attack=None), optimizer=opt)
    return bare_model, bare, model, wrapped, opt, inputs


@pytest.mark.parametrize("name", list(ZOO))
def test_wrap_with_atmc_off_prunes_exactly_as_bare(name: str) -> None:
    bare_model, bare, model, wrapped, opt, inputs = _bare_and_wrapped(name)
    bare_opt = torch.optim.SGD(bare_model.parameters(), lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an untraced slice warns
        _sgd_step(bare_model, bare_opt, inputs, 0)
        _sgd_step(model, opt, inputs, 0)
        bare.step()
        wrapped.step()
        _sgd_step(bare_model, bare_opt, inputs, 1)  # momentum differs from here on
        _sgd_step(model, opt, inputs, 1)
    assert model.state_dict().keys() == bare_model.state_dict().keys()
    for key, value in bare_model.state_dict().items():
        assert wrapped.model.state_dict()[key].shape == value.shape, key
    _assert_optimizer_holds_the_live_parameters(model, opt)
    wrapped.step()
    _assert_optimizer_holds_the_live_parameters(model, opt)
    _sgd_step(model, opt, inputs, 9)  # trains the live tensors


@pytest.mark.parametrize("name", list(ZOO))
def test_values_equal_bare_with_atmc_off(name: str) -> None:
    """Pruning itself (no training in between) gives the same tensors, values included."""
    bare_model, bare, model, wrapped, _opt, _inputs = _bare_and_wrapped(name)
    for _ in range(2):
        bare.step()
        wrapped.step()
    for key, value in bare_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("name", list(ZOO))
def test_atmc_on_meets_budget_and_round_trips(name: str, tmp_path) -> None:
    build, inputs = ZOO[name]
    torch.manual_seed(0)
    model = build()
    example = inputs(1, torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    config = ATMCConfig(attack=None, constraint=ConstraintConfig(density=0.2, bits=4))
    wrapped = atmc_plugin.wrap(_pruner(model, example), config, optimizer=opt)
    for step in range(2):
        wrapped.step()
        _sgd_step(model, opt, inputs, step)
    report = wrapped.finalize()
    elementwise = report.elementwise
    assert elementwise.nnz <= elementwise.budget
    assert all(t.distinct <= 16 for t in elementwise.tensors)  # 4 bits: at most 15 non-zero
    save_pruned(tmp_path / "p.pt", wrapped)
    torch.manual_seed(0)
    fresh = build()
    load_pruned(tmp_path / "p.pt", fresh, example)
    x = inputs(4, torch.Generator().manual_seed(7))
    model.eval()
    fresh.eval()
    assert torch.equal(model(x), fresh(x))
