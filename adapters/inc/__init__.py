"""Intel Neural Compressor adapter: ATMC as an INC algorithm (``"atmc"``).

Importing a name from this package (``ATMCQuantConfig``, ``session_of``, ``autotune``,
``conversion_report`` ...) loads the adapter, which registers :class:`ATMCQuantConfig` and the
``"atmc"`` entry in INC's own registries (after checking the INC version). The package itself
is light: the plugin manager loads it as the entry point ``inc`` without importing INC, and
its hooks import INC only when handed an INC object. ``atmc_plugin.wrap(inc_config,
atmc_config)`` turns an INC ``RTNConfig`` or ``StaticQuantConfig`` into the matching
:class:`ATMCQuantConfig`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import fx

from atmc_plugin import ATMCConfig, hookimpl

if TYPE_CHECKING:
    from .algorithm import ConversionReport, INCSession, conversion_report, session_of
    from .config import ALGO_NAME, ATMCQuantConfig
    from .pt2e import quantize_static_int8, straight_through_copy
    from .saving import save_inc
    from .tuning import autotune
    from .wrapping import from_inc_config

_EXPORTS = {
    "ALGO_NAME": "config",
    "ATMCQuantConfig": "config",
    "ConversionReport": "algorithm",
    "INCSession": "algorithm",
    "conversion_report": "algorithm",
    "session_of": "algorithm",
    "autotune": "tuning",
    "from_inc_config": "wrapping",
    "quantize_static_int8": "pt2e",
    "straight_through_copy": "pt2e",
    "save_inc": "saving",
}
__all__ = [
    "ALGO_NAME",
    "ATMCQuantConfig",
    "ConversionReport",
    "INCSession",
    "autotune",
    "conversion_report",
    "from_inc_config",
    "quantize_static_int8",
    "save_inc",
    "session_of",
    "straight_through_copy",
]


def load() -> None:
    """Load the adapter: check INC's version, register ``"atmc"`` in INC's registries."""
    from .compat import check_supported, installed_version

    check_supported(installed_version())  # before INC's registries are touched
    for module in ("config", "algorithm", "tuning", "wrapping"):
        importlib.import_module(f"{__name__}.{module}")


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    load()
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


def _from_inc(obj: Any) -> bool:
    return any(c.__module__.startswith("neural_compressor.") for c in type(obj).__mro__)


@hookimpl
def atmc_attackable_model(model: Any) -> Any:
    """INC/PT2E int8 graphs are attacked through their straight-through copy."""
    if not isinstance(model, fx.GraphModule):
        return None  # only exported graphs can be INC's int8 models
    from .pt2e import _attackable

    copy = _attackable(model)
    return None if copy is model else copy


@hookimpl
def atmc_build_adapter(target: Any, config: ATMCConfig, options: Mapping[str, Any]) -> Any:
    """INC configs become ATMC-trained INC configs; ``None`` for anything else."""
    if set(options) - {"plugin_manager", "total_steps"} or not _from_inc(target):
        return None
    load()
    from .wrapping import from_inc_config

    return from_inc_config(target, config, total_steps=options.get("total_steps"))


@hookimpl
def atmc_command_sections() -> list[str]:
    """INC's recipe sections: compression through INC, and the two ways to ship."""
    return ["inc.atmc", "inc.static", "inc.rtn"]


@hookimpl
def atmc_command_backend(section: str, settings: Mapping[str, Any], context: Any) -> Any:
    """The ``atmc`` command's backends for ``[inc.atmc]``, ``[inc.static]``, ``[inc.rtn]``."""
    if section not in ("inc.atmc", "inc.static", "inc.rtn"):
        return None
    load()
    from .backend import ATMCQuantBackend, StaticInt8Backend, WeightOnlyBackend

    backends = {
        "inc.atmc": ATMCQuantBackend,
        "inc.static": StaticInt8Backend,
        "inc.rtn": WeightOnlyBackend,
    }
    return backends[section](settings, context)
