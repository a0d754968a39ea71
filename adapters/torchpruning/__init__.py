"""Torch-Pruning adapter: ``atmc_plugin.wrap(pruner, config)`` for any ``tp.pruner.BasePruner``.

Registered in the ``atmc_plugin`` entry-point group as ``torch_pruning``, exactly like a
third-party plugin. The package is light (its names load on first use), so loading the plugin
does not import Torch-Pruning; the hook imports it only when handed a Torch-Pruning object.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from atmc_plugin import ATMCConfig, hookimpl

if TYPE_CHECKING:
    from .checkpoint import load_pruned, save_pruned
    from .importance import ADMMProxyImportance, RobustTaylorImportance
    from .pruner import ATMCPruner
    from .report import PruningReport
    from .rgsm import RGSM

_EXPORTS = {
    "RGSM": "rgsm",
    "ADMMProxyImportance": "importance",
    "ATMCPruner": "pruner",
    "PruningReport": "report",
    "RobustTaylorImportance": "importance",
    "load_pruned": "checkpoint",
    "save_pruned": "checkpoint",
}
__all__ = [
    "RGSM",
    "ADMMProxyImportance",
    "ATMCPruner",
    "PruningReport",
    "RobustTaylorImportance",
    "load_pruned",
    "save_pruned",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


_OPTIONS = {"optimizer", "example_inputs", "regularizer", "plugin_manager", "total_steps"}


@hookimpl
def atmc_build_adapter(target: Any, config: ATMCConfig, options: Mapping[str, Any]) -> Any:
    """Wrap Torch-Pruning pruners; ``None`` for anything else."""
    if not any(c.__module__.startswith("torch_pruning.") for c in type(target).__mro__):
        return None  # not a Torch-Pruning object: leave torch_pruning unimported
    import torch_pruning as tp

    from .pruner import ATMCPruner

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


@hookimpl
def atmc_command_sections() -> list[str]:
    """The recipe section of Torch-Pruning."""
    return ["torch_pruning"]


@hookimpl
def atmc_command_backend(section: str, settings: Mapping[str, Any], context: Any) -> Any:
    """The ``atmc`` command's backend for the ``[torch_pruning]`` recipe section."""
    if section != "torch_pruning":
        return None
    from .backend import PruningBackend

    return PruningBackend(settings, context)
