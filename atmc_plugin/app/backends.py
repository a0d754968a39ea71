"""The recipe's tools as backends (see :mod:`atmc_plugin.backend`), found through the plugins.

The command knows tool sections only as names and dicts: ``[torch_pruning]`` is the section
``"torch_pruning"``, ``[inc.<algo>]`` the section ``"inc.<algo>"``. Whatever plugin answers the
``atmc_command_backend`` hook for a section provides its backend; without a compression
section the command compresses with plain :class:`~atmc_plugin.ATMC`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..backend import (
    BackendContext,
    CompressionBackend,
    MakeOptimizer,
    SessionBackend,
    ShipBackend,
)
from ..core import ATMC
from ..errors import ATMCError, InputError, did_you_mean
from ..plugins import ENTRY_POINT_GROUP, default_plugin_manager
from .recipe import RUN_SECTIONS, Recipe, RecipeError


class PlainBackend(SessionBackend):
    """Plain :class:`~atmc_plugin.ATMC` with the recipe's ``[atmc]`` configuration."""

    section = "atmc"

    def __init__(self, context: BackendContext) -> None:
        self.context = context

    def check(self, model: nn.Module) -> None:
        """Nothing more: the command's plan dry-runs ``[atmc]`` on the model itself."""

    def prepare(
        self, model: nn.Module, make_optimizer: MakeOptimizer
    ) -> tuple[nn.Module, ATMC, torch.optim.Optimizer]:
        self.atmc = ATMC(model, self.context.atmc, plugin_manager=self.context.plugin_manager)
        optimizer = make_optimizer(model)
        self.atmc.attach(optimizer)
        return model, self.atmc, optimizer

    def finalize(self, model: nn.Module) -> nn.Module:
        self.session().finalize()
        return model

    def rebuild(self, model: nn.Module, state: dict[str, Any]) -> None:
        if self.context.atmc.constraint.factorize:
            ATMC(model, self.context.atmc)  # re-creates the low-rank + sparse parametrization


@dataclass(frozen=True)
class Tools:
    """The backends of one recipe: the compressor and, if any, the shipper."""

    compress: CompressionBackend
    ship: ShipBackend | None


def tool_sections(recipe: Recipe) -> list[tuple[str, dict[str, Any]]]:
    """``(section name, settings)`` of every tool section of ``recipe``, in file order."""
    return [(name, dict(settings)) for name, settings in recipe.tools]


def resolve_tools(recipe: Recipe, example: Tensor, plugin_manager: Any = None) -> Tools:
    """Ask the plugins for the backend of each tool section of ``recipe``.

    :raises RecipeError: no plugin handles a section, a backend refuses its settings, or the
        recipe names two compressors.
    """
    pm = plugin_manager if plugin_manager is not None else default_plugin_manager()
    context = BackendContext(
        source=str(recipe.path),
        atmc=recipe.atmc,
        example=example,
        seed=recipe.seed,
        plugin_manager=pm,
    )
    compressors: list[CompressionBackend] = []
    shippers: list[ShipBackend] = []
    for section, settings in tool_sections(recipe):
        try:
            backend = pm.hook.atmc_command_backend(
                section=section, settings=settings, context=context
            )
        except ATMCError as exc:
            raise RecipeError(f"{recipe.path}: {exc}") from exc
        if backend is None:
            theirs = known_tool_sections(pm)
            raise RecipeError(
                f"{recipe.path}: no installed plugin handles the [{section}] section."
                f"{did_you_mean(section, [*RUN_SECTIONS, *theirs])} Sections the installed "
                f"plugins handle: {', '.join(theirs) or 'none'}; the run's own: "
                f"{', '.join(RUN_SECTIONS)}. A tool's section needs its adapter (a plugin of the "
                f"{ENTRY_POINT_GROUP!r} entry-point group implementing atmc_command_backend)."
            )
        if isinstance(backend, CompressionBackend):
            compressors.append(backend)
        elif isinstance(backend, ShipBackend):
            shippers.append(backend)
        else:
            raise InputError(
                f"the plugin backend for [{section}] ({type(backend).__name__}) implements "
                "neither CompressionBackend nor ShipBackend (atmc_plugin.backend)."
            )
    for kind, found in (("compress", compressors), ("ship", shippers)):
        if len(found) > 1:
            names = " and ".join(f"[{b.section}]" for b in found)
            raise RecipeError(
                f"{recipe.path}: {names} both {kind} the model; a run has one tool that "
                f"compresses and at most one that ships: keep one of them."
            )
    return Tools(
        compress=compressors[0] if compressors else PlainBackend(context),
        ship=shippers[0] if shippers else None,
    )


def known_tool_sections(plugin_manager: Any = None) -> list[str]:
    """The tool sections the installed plugins declare (``atmc_command_sections``)."""
    pm = plugin_manager if plugin_manager is not None else default_plugin_manager()
    return sorted({s for names in pm.hook.atmc_command_sections() for s in names})


def check_tools(recipe: Recipe, tools: Tools, model: nn.Module) -> None:
    """Every backend's :meth:`check` on a copy of ``model``; errors name the recipe file."""
    for backend in (tools.compress, tools.ship):
        if backend is None:
            continue
        try:
            backend.check(copy.deepcopy(model))
        except ATMCError as exc:
            raise RecipeError(f"{recipe.path}: {exc}") from exc
