"""The plugin manager factory.

Nothing happens at import time. :func:`get_plugin_manager` builds a fresh
:class:`pluggy.PluginManager` each call: it registers the built-in plugins, loads the
``atmc_plugin`` entry-point group and validates every hook implementation.
:func:`default_plugin_manager` is the manager every library entry point uses when none is
passed: built on first use, then shared (entry points are loaded once per process, not once
per ``ATMC`` object), and rebuilt when ``ATMC_PLUGIN_BLOCK`` changes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable

import pluggy

from . import hookspecs
from .hookspecs import PROJECT_NAME

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker for hook implementations: ``@atmc_plugin.hookimpl``."""

ENTRY_POINT_GROUP = "atmc_plugin"
"""Entry-point group scanned for plugins (``[project.entry-points.atmc_plugin]``)."""

BLOCK_ENV_VAR = "ATMC_PLUGIN_BLOCK"
"""Comma-separated plugin names that must not be registered (built-in or entry point)."""

BUILTIN_PLUGINS = {
    "atmc.attacks": "atmc_plugin.attacks",
    "atmc.projection": "atmc_plugin.projection",
}


def blocked_from_env() -> list[str]:
    """Plugin names listed in :data:`BLOCK_ENV_VAR`."""
    raw = os.environ.get(BLOCK_ENV_VAR, "")
    return [name.strip() for name in raw.split(",") if name.strip()]


def get_plugin_manager(
    *, entry_points: bool = True, block: Iterable[str] = ()
) -> pluggy.PluginManager:
    """Return a new plugin manager with the built-in plugins and installed plugins registered.

    :param entry_points: load plugins from the ``atmc_plugin`` entry-point group.
    :param block: plugin names to block, in addition to those in ``ATMC_PLUGIN_BLOCK``.
        Built-in names are ``atmc.attacks`` and ``atmc.projection``; entry-point plugins are
        named after their entry point.
    :raises pluggy.PluginValidationError: a plugin implements a hook that does not exist
        (typically a misspelled hook name).
    """
    import importlib

    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in (*blocked_from_env(), *block):
        pm.set_blocked(name)
    for name, module_name in BUILTIN_PLUGINS.items():
        if not pm.is_blocked(name):
            pm.register(importlib.import_module(module_name), name=name)
    if entry_points:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # a broken third-party plugin must say which one it is
            from .errors import PluginError

            raise PluginError(
                f"an installed atmc_plugin plugin failed to load: {type(exc).__name__}: {exc}. "
                f"Fix or uninstall it, or block it by name with {BLOCK_ENV_VAR}=<name> "
                "(see `pip show` / the entry points of the 'atmc_plugin' group)."
            ) from exc
    pm.check_pending()
    return pm


def default_plugin_manager() -> pluggy.PluginManager:
    """The shared manager: :func:`get_plugin_manager` with its defaults, built on first use.

    Plugins registered on it by hand stay registered for every later default use. Pass your
    own manager (``plugin_manager=``) to keep a registration local.
    """
    return _shared_manager(tuple(blocked_from_env()))


@functools.cache
def _shared_manager(blocked: tuple[str, ...]) -> pluggy.PluginManager:
    return get_plugin_manager()  # reads the same ATMC_PLUGIN_BLOCK as ``blocked``


def plugin_origins(pm: pluggy.PluginManager) -> dict[str, str]:
    """Map each registered plugin name to where it comes from (built-in or a distribution)."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    out = {}
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist = dists.get(id(plugin))
        if dist is not None:
            out[name] = f"{dist.project_name} {dist.version}"
        elif name in BUILTIN_PLUGINS:
            out[name] = "built-in"
        else:
            out[name] = getattr(plugin, "__name__", type(plugin).__name__)
    return out
