"""Choosing which layers ATMC compresses."""

from __future__ import annotations

import itertools
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


def following_norms(model: nn.Module, names: list[str]) -> dict[str, str]:
    """For each layer in ``names``, the BatchNorm that normalizes its output, by module order.

    A layer is matched to the next leaf module registered after it when that module is a
    BatchNorm with running statistics and one feature per output channel of the layer (the
    ``conv -> bn`` pattern of ResNet, MobileNet, EfficientNet, RegNet ...). Transposed convs,
    whose output channels are not the first weight dimension, are never matched. Registration
    order can differ from the data flow; a mismatch only makes the ranking of that layer fall
    back to its raw weights (a wrong number of features is rejected).

    :returns: ``{layer name: norm module name}`` for the matched layers.
    """
    wanted = set(names)
    leaves = [
        (n, m)
        for n, m in model.named_modules()
        if "parametrizations" not in n.split(".")
        and (isinstance(m, COMPRESSIBLE_TYPES) or not any(True for _ in m.children()))
    ]
    matched = {}
    for (name, module), (next_name, follower) in itertools.pairwise(leaves):
        if name not in wanted or isinstance(module, nn.modules.conv._ConvTransposeNd):
            continue
        if not isinstance(follower, nn.modules.batchnorm._BatchNorm):
            continue
        if follower.running_var is None or follower.num_features != _out_features(module):
            continue
        matched[name] = next_name
    return matched


def norm_scale(norm: nn.Module) -> Tensor | None:
    """``|gamma| / sqrt(running_var + eps)`` of a BatchNorm (``None`` without running stats)."""
    var = getattr(norm, "running_var", None)
    if not isinstance(var, Tensor):
        return None
    scale = (var.detach().float() + float(getattr(norm, "eps", 1e-5))).rsqrt()
    gamma = getattr(norm, "weight", None)
    if isinstance(gamma, Tensor):
        scale = scale * gamma.detach().float().abs()
    return scale


def _out_features(module: nn.Module) -> int:
    weight = getattr(module, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, Tensor) else -1
