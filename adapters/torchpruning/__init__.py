"""Torch-Pruning adapter: ``atmc_plugin.wrap(pruner, config)`` for any ``tp.pruner.BasePruner``.

Registered in the ``atmc_plugin`` entry-point group as ``torch_pruning``, exactly like a
third-party plugin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from atmc_plugin import ATMCConfig, hookimpl

from .checkpoint import load_pruned, save_pruned
from .importance import ADMMProxyImportance, RobustTaylorImportance
from .pruner import ATMCPruner
from .report import PruningReport
from .rgsm import RGSM

__all__ = [
    "RGSM",
    "ADMMProxyImportance",
    "ATMCPruner",
    "PruningReport",
    "RobustTaylorImportance",
    "load_pruned",
    "save_pruned",
]

_OPTIONS = {"optimizer", "example_inputs", "regularizer"}


@hookimpl
def atmc_build_adapter(target: Any, config: ATMCConfig, options: Mapping[str, Any]) -> Any:
    """Wrap Torch-Pruning pruners; ``None`` for anything else."""
    try:
        import torch_pruning as tp
    except ImportError:  # pragma: no cover - torch-pruning is a dependency
        return None
    if not isinstance(target, tp.pruner.BasePruner):
        return None
    unknown = set(options) - _OPTIONS
    if unknown:
        from atmc_plugin import ConfigError

        raise ConfigError(
            f"wrap() got unknown option(s) {sorted(unknown)} for a Torch-Pruning pruner; "
            f"valid: {sorted(_OPTIONS)}."
        )
    return ATMCPruner(target, config, **dict(options))
