"""What a model costs to run: parameters and multiply-accumulates per conv/linear layer.

One MAC definition for the whole project (``results.json``, the report, the benchmarks): the
FLOPs that :class:`torch.utils.flop_counter.FlopCounterMode` counts in the conv and linear
layers, divided by two, for one example batch, on the model as it is (after structural
pruning; factorized weights merged first by the caller).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .modes import preserved_modes


def layer_costs(model: nn.Module, example_inputs: Tensor) -> dict[str, dict[str, int]]:
    """Parameters and multiply-accumulates per conv/linear layer, for one example batch.

    MACs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` (FLOPs / 2) on the
    model as it is now (after structural pruning), in eval mode; modes are restored.
    """
    from torch.utils.flop_counter import FlopCounterMode

    layers = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
    }
    counter = FlopCounterMode(display=False)
    with preserved_modes(model), torch.no_grad(), counter:
        model.eval()
        model(example_inputs)
    flops = counter.get_flop_counts()
    out = {}
    for name, module in layers.items():
        key = f"{type(model).__name__}.{name}" if name else type(model).__name__
        per_op = flops.get(key, {})
        out[name] = {
            "params": sum(p.numel() for p in module.parameters(recurse=False)),
            "macs": int(sum(per_op.values()) // 2),
        }
    return out


def total_macs(model: nn.Module, example_inputs: Tensor) -> int:
    """The model's MACs (:func:`layer_costs` summed)."""
    return sum(c["macs"] for c in layer_costs(model, example_inputs).values())
