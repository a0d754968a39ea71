"""Measurements the Torch-Pruning adapter shares: channels, MACs, input devices."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from atmc_plugin import InputError
from atmc_plugin.modes import preserved_modes


def out_channels(module: nn.Module) -> int:
    """Output channels of a layer (transposed convolutions included)."""
    weight = getattr(module, "weight", None)
    if weight is None:
        return 0
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return int(weight.shape[1] * module.groups)
    return int(weight.shape[0])


def count_macs(model: nn.Module, example_inputs: Any) -> int | None:
    """Torch-Pruning's MAC count of ``model`` on ``example_inputs`` (None without inputs)."""
    if example_inputs is None:
        return None
    import torch_pruning as tp

    with preserved_modes(model):
        macs, _ = tp.utils.count_ops_and_params(model, example_inputs)
    return int(macs)


def check_inputs_device(inputs: Any, device: torch.device) -> None:
    """Refuse example inputs on another device than the model's (names both and the fix)."""
    tensors = (
        [inputs]
        if isinstance(inputs, Tensor)
        else list(inputs.values() if isinstance(inputs, dict) else inputs)
    )
    for t in tensors:
        if isinstance(t, Tensor) and t.device != device:
            raise InputError(
                f"example_inputs are on {t.device} but the model is on {device}; move them with "
                f".to({str(device)!r})."
            )
