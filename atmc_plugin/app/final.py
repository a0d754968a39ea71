"""A finished run's models: rebuilt from ``final.pt`` for ``atmc eval`` and ``atmc export``, and
the shipping step (the tool's ship backend, e.g. INC's int8) that ``atmc run`` ends with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ATMCError, InputError
from .backends import Tools
from .build import Data
from .plan import Plan, make_plan
from .recipe import Recipe
from .rundir import RunDir, read_tagged
from .runner import train_batches

FINAL_FORMAT = "atmc-run-final"


def ship(plan: Plan, model: nn.Module) -> nn.Module:
    """The model to ship: the plan's ship backend's (INC static int8 with ``[inc.static]``),
    else ``model`` itself. The calibration batches are the first 512 training examples.
    """
    if plan.tools.ship is None:
        return model
    data = plan.data
    device = next(model.parameters()).device
    calib = train_batches(data.x_train[:512].to(device), data.y_train[:512].to(device), 128)
    return plan.tools.ship.ship(model, calib)


@dataclass(frozen=True)
class Final:
    """A run's final model rebuilt from ``final.pt``: the recipe and its data, the compressed
    fp32 model, the shipped model (the same object when no tool ships) and the tools."""

    recipe: Recipe
    data: Data
    model: nn.Module
    shipped: nn.Module
    tools: Tools


def rebuild_final(path: Path, device: torch.device) -> Final:
    """Rebuild a run's final model from ``final.pt`` (weights_only): the fp32 model with its
    pruned structure replayed and factorization rebuilt, then the shipped model (int8 if any).

    :raises InputError: not a final checkpoint of ``atmc run``.
    """
    from .recipe import recipe_from_dict

    payload = read_tagged(path, FINAL_FORMAT)
    try:
        recipe = recipe_from_dict(payload["recipe"], _rebuild_path(path, payload))
        plan = make_plan(recipe, device, checks=False)
        model = plan.new_model()
        tools = plan.tools
        if payload["tools"] is not None:
            tools.compress.rebuild(model, payload["tools"])
        model.load_state_dict(payload["model"])
    except ATMCError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
        raise InputError(
            f"{str(path)!r} does not describe a model this atmc-plugin can rebuild "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
            "it was not modified."
        ) from exc
    model.eval()
    return Final(recipe, plan.data, model, ship(plan, model), tools)


def load_final(path: Path, device: torch.device) -> tuple[Recipe, Data, nn.Module, nn.Module]:
    """:func:`rebuild_final` as ``(recipe, data, fp32 model, shipped model)``."""
    final = rebuild_final(path, device)
    return final.recipe, final.data, final.model, final.shipped


def _rebuild_path(final: Path, payload: dict[str, Any]) -> Path:
    """Where the recipe's factories are imported from when rebuilding ``final``: the recipe's
    own folder while it still holds every module the run copied, else the run folder's copies
    (``RUN_DIR/code``), so a run folder stays usable after the project moves."""
    original = Path(payload["recipe_path"])
    code = RunDir(final.parent).code
    if code.is_dir():
        copies = [p.relative_to(code) for p in code.rglob("*.py")]
        if not all((original.parent / rel).is_file() for rel in copies):
            return code / original.name
    return original
