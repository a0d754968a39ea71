"""The user's own model and data in a recipe: ``factory = "package.module:function"``.

The module is imported from the recipe's folder first, then from the installed packages.
``[model] factory`` gets the section's other keys as keyword arguments and must return an
``nn.Module``. ``[data] factory`` gets ``[data] args`` and must return ``(train, test)`` or
``(train, validation, test)``, each a ``torch.utils.data.Dataset`` of ``(input, label)`` pairs
or an ``(inputs, labels)`` pair of tensors; inputs are floats in [0, 1] (the attacks' box).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .recipe import RecipeError


def load_callable(spec: str, folder: Path, where: str) -> Callable[..., Any]:
    """The function ``spec`` (``"package.module:function"``) names.

    :param folder: searched first (the recipe's folder).
    :param where: the recipe location for messages, e.g. ``"recipe.toml: [model] factory"``.
    :raises RecipeError: a malformed spec, a module that does not import, no such callable.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise RecipeError(
            f"{where} = {spec!r}: expected 'package.module:function' (a module importable "
            "from the recipe's folder or installed, and a function in it)."
        )
    added = str(folder) not in sys.path
    if added:
        sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RecipeError(
            f"{where} = {spec!r}: cannot import {module_name!r} from {folder} or the installed "
            f"packages ({exc}); put the module next to the recipe or install it."
        ) from exc
    finally:
        if added:
            sys.path.remove(str(folder))
    function = getattr(module, attr, None)
    if not callable(function):
        raise RecipeError(f"{where} = {spec!r}: {module_name} has no function {attr!r}.")
    return function


def as_tensors(split: Any, where: str, name: str) -> tuple[Tensor, Tensor]:
    """``(inputs, labels)`` of a split given as a tensor pair or a map-style ``Dataset``."""
    if (
        isinstance(split, (tuple, list))
        and len(split) == 2
        and all(isinstance(t, Tensor) for t in split)
    ):
        x, y = split
    elif isinstance(split, torch.utils.data.Dataset):
        try:
            loader = torch.utils.data.DataLoader(split, batch_size=256, shuffle=False)
            batches = list(loader)
            x = torch.cat([b[0] for b in batches])
            y = torch.cat([b[1] for b in batches])
        except (TypeError, IndexError, RuntimeError) as exc:
            raise RecipeError(
                f"{where}: the {name} split must yield (input tensor, integer label) pairs: {exc}"
            ) from exc
    else:
        raise RecipeError(
            f"{where}: the {name} split is a {type(split).__name__}; return a Dataset of "
            "(input, label) pairs or an (inputs, labels) pair of tensors."
        )
    if len(x) != len(y) or len(y) == 0:
        raise RecipeError(f"{where}: the {name} split has {len(x)} inputs and {len(y)} labels.")
    if not x.is_floating_point() or y.dtype not in (torch.int64, torch.int32, torch.int16):
        raise RecipeError(
            f"{where}: the {name} split has {x.dtype} inputs and {y.dtype} labels; expected "
            "float inputs in [0, 1] and integer class labels."
        )
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise RecipeError(
            f"{where}: the {name} inputs span [{float(x.min()):.3g}, {float(x.max()):.3g}]; the "
            "attacks work in [0, 1] pixel units: scale the inputs (put normalization inside "
            "the model)."
        )
    return x.float(), y.long()
