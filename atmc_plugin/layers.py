"""Choosing which layers ATMC compresses."""

from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

from .config import ConstraintConfig

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
