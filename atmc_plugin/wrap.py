"""``atmc_plugin.wrap``: hand a tool's own object (a pruner, a config ...) to its adapter."""

from __future__ import annotations

from typing import Any

from .config import ATMCConfig
from .errors import PluginError
from .plugins import ENTRY_POINT_GROUP, default_plugin_manager


def wrap(
    target: Any, config: ATMCConfig | None = None, *, plugin_manager: Any = None, **options: Any
) -> Any:
    """Return ``target`` wrapped by the adapter of its tool, with ATMC enabled.

    :param target: the tool object, e.g. a ``torch_pruning.pruner.BasePruner``.
    :param config: the ATMC configuration (default :class:`ATMCConfig`).
    :param plugin_manager: plugin manager to use (default: :func:`default_plugin_manager`);
        when given, it is also handed to the adapter (option ``plugin_manager``), so the ATMC
        it builds uses the same plugins.
    :param options: adapter options, e.g. ``optimizer=...``.
    :raises PluginError: no installed adapter recognises ``target``.
    """
    pm = plugin_manager if plugin_manager is not None else default_plugin_manager()
    cfg = config if config is not None else ATMCConfig()
    if plugin_manager is not None:
        options = {**options, "plugin_manager": plugin_manager}
    adapter = pm.hook.atmc_build_adapter(target=target, config=cfg, options=dict(options))
    if adapter is None:
        installed = sorted(impl.plugin_name for impl in pm.hook.atmc_build_adapter.get_hookimpls())
        raise PluginError(
            f"no installed adapter recognises {type(target).__module__}.{type(target).__name__}. "
            f"Installed adapters: {', '.join(installed) or 'none'}. An adapter is a plugin that "
            f"implements atmc_build_adapter and registers in the {ENTRY_POINT_GROUP!r} "
            "entry-point group (see docs/hooks.md)."
        )
    return adapter
