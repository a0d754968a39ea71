"""One run's plan: the recipe checked once, and everything the run builds from it built once.

:func:`make_plan` loads the data, builds the model, checks it against the data, the
``[model] weights``, the ``[atmc]`` constraint and every tool section, and resolves the tool
backends through the plugins, all before any training. The :class:`Plan` it returns carries
the very backend objects that will train (their checks ran on copies of the model), and a
pristine model that :meth:`Plan.new_model` copies for training, for the dense reference and
for rebuilding a finished run: the model is built once per run.

``atmc run``::

    recipe ──make_plan──> Plan(recipe, device, ctx, data, tools, template)
                            │ new_model() + [model] weights
                            ▼
                   Trainer(plan, model).run() ──> Trained(model, atmc, guard, seconds)
                                                     │
                                    finish(plan, trained, run): ship, evaluate, export, report
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ATMCError
from .backends import Tools, check_tools, resolve_tools
from .build import Data, build_model, load_data
from .recipe import Recipe, RecipeError


@dataclass(frozen=True)
class Plan:
    """What one run is made of, checked.

    :param recipe: the validated recipe.
    :param device: where the model trains.
    :param ctx: the distributed context (:class:`~atmc_plugin.app.distributed.Context`).
    :param data: the data (this rank's training share once :meth:`sharded`).
    :param tools: the compression backend and the shipping backend, resolved once.
    :param template: the freshly initialized model (seeded, on the CPU, never trained):
        :meth:`new_model` hands out copies.
    :param rng_after_build: torch's RNG state right after the model was built, so that
        training draws the same stream as if it had built the model itself.
    :param plugin_manager: the plugin manager the tools came from.
    """

    recipe: Recipe
    device: torch.device
    ctx: Any
    data: Data
    tools: Tools
    template: nn.Module
    rng_after_build: torch.Tensor
    plugin_manager: Any = None

    def new_model(self) -> nn.Module:
        """A copy of the recipe's freshly initialized model, on the training device."""
        return copy.deepcopy(self.template).to(self.device)

    def sharded(self) -> Plan:
        """The plan with this rank's share of the training data (itself in one process)."""
        return dataclasses.replace(self, data=self.ctx.shard(self.data))


def make_plan(
    recipe: Recipe,
    device: torch.device,
    ctx: Any = None,
    *,
    plugin_manager: Any = None,
    checks: bool = True,
) -> Plan:
    """Load, build, check and resolve everything of ``recipe`` before any work.

    :param ctx: the distributed context (default: one process).
    :param plugin_manager: where the tool backends are looked up (default: the process's).
    :param checks: run the model, weights, constraint and backend checks (``False`` to rebuild
        a finished run, whose recipe already passed them).
    :raises RecipeError: anything wrong with the recipe, named with the file, key and fix.
    """
    if ctx is None:
        from .distributed import Context

        ctx = Context()
    data = load_data(recipe)
    torch.manual_seed(recipe.seed)
    template = build_model(recipe, data)
    rng = torch.get_rng_state()
    example = data.example.to(device)
    tools = resolve_tools(recipe, example, plugin_manager)
    plan = Plan(recipe, device, ctx, data, tools, template, rng, plugin_manager)
    if checks:
        _check(plan)
    return plan


def _check(plan: Plan) -> None:
    """The model against the data and the recipe's settings, on a copy."""
    recipe = plan.recipe
    model = plan.new_model()
    example = plan.data.example.to(plan.device)
    try:
        with torch.no_grad():
            model.eval()(example)
    except RuntimeError as exc:
        raise RecipeError(
            f"{recipe.path}: [model] {recipe.model_name} does not accept the {recipe.dataset} "
            f"inputs of shape {tuple(example.shape[1:])}: {exc}"
        ) from exc
    if recipe.augment != "none" and example.dim() != 4:
        raise RecipeError(
            f"{recipe.path}: [data] augment = {recipe.augment!r} shifts and flips images "
            f"(N, C, H, W), but the inputs have shape {tuple(example.shape)}; set "
            "augment = 'none' (or augment inside your Dataset)."
        )
    if recipe.model_weights is not None:
        from .weights import load_weights

        load_weights(model, recipe.model_weights, f"{recipe.path}: [model] weights")
    check_tools(recipe, plan.tools, model)  # each backend on its own copy
    _check_constraint_fits(recipe, model, plan.plugin_manager)  # last: it may change the model


def _check_constraint_fits(recipe: Recipe, model: nn.Module, plugin_manager: Any) -> None:
    """``[atmc]`` against this model (layers selected, budget within the weights), so that a bad
    include pattern or nnz fails before pre-training; ``model`` is the plan's throwaway copy
    (a factorized constraint re-parametrizes it). (The one dry run of the
    recipe's ATMC: the plain backend's check leaves it to this; INC's checks its own section.)"""
    from ..core import ATMC

    try:
        ATMC(model, recipe.atmc, plugin_manager=plugin_manager)
    except ATMCError as exc:
        raise RecipeError(f"{recipe.path}: [atmc] {exc}") from exc


def check_recipe(recipe: Recipe, device: torch.device) -> Data:
    """Every check of :func:`make_plan`; returns the data (for tests and tools)."""
    try:
        return make_plan(recipe, device).data
    except RecipeError:
        raise
    except ATMCError as exc:
        raise RecipeError(f"{recipe.path}: {exc}") from exc
