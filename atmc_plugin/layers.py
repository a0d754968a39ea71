"""Choosing which layers ATMC compresses."""

from __future__ import annotations

from fnmatch import fnmatchcase

from torch import Tensor, nn

from .config import ConstraintConfig
from .errors import InputError

COMPRESSIBLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)


def select_layers(model: nn.Module, config: ConstraintConfig) -> list[tuple[str, nn.Module]]:
    """Conv and linear modules whose name matches ``include``, not ``exclude``, and the filter.

    Names are those of ``model.named_modules()``; the order is the model's, which makes the
    global sparsity tie-break deterministic.
    """
    chosen = []
    for name, module in model.named_modules():
        if not isinstance(module, COMPRESSIBLE_TYPES):
            continue
        if not any(fnmatchcase(name, p) for p in config.include):
            continue
        if any(fnmatchcase(name, p) for p in config.exclude):
            continue
        if config.layer_filter is not None and not config.layer_filter(module, name):
            continue
        chosen.append((name, module))
    return chosen


def layer_weight(module: nn.Module) -> Tensor:
    """The ``weight`` tensor of a conv/linear layer (typed; a clear error if there is none)."""
    weight = module.weight
    if not isinstance(weight, Tensor):
        raise InputError(f"{type(module).__name__} has no weight tensor to compress.")
    return weight
