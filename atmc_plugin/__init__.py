"""atmc-plugin: adversarially trained model compression (ATMC) for Torch-Pruning and INC.

Public API: :class:`ATMC` (any training loop), :class:`ATMCConfig` and its sections,
:func:`wrap` (adapters for the tools' own objects), :data:`hookimpl` and
:func:`get_plugin_manager` (plugins). Importing the package does nothing else.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .config import ADMMConfig, ATMCConfig, AttackConfig, ConstraintConfig
from .core import ATMC
from .errors import (
    ATMCError,
    ConfigError,
    InputError,
    OverfitWarning,
    PluginError,
    ScheduleWarning,
    TrainingModeWarning,
)
from .guard import GuardConfig, GuardEvent, OverfitGuard
from .plugins import ENTRY_POINT_GROUP, default_plugin_manager, get_plugin_manager, hookimpl
from .report import CompressionReport
from .robustness import RobustnessReport, RobustnessWarning, evaluate
from .wrap import wrap

try:
    __version__ = version("atmc-plugin")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    "ATMC",
    "ENTRY_POINT_GROUP",
    "ADMMConfig",
    "ATMCConfig",
    "ATMCError",
    "AttackConfig",
    "CompressionReport",
    "ConfigError",
    "ConstraintConfig",
    "GuardConfig",
    "GuardEvent",
    "InputError",
    "OverfitGuard",
    "OverfitWarning",
    "PluginError",
    "RobustnessReport",
    "RobustnessWarning",
    "ScheduleWarning",
    "TrainingModeWarning",
    "__version__",
    "default_plugin_manager",
    "evaluate",
    "get_plugin_manager",
    "hookimpl",
    "wrap",
]
