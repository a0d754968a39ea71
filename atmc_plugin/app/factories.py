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

from ..errors import did_you_mean
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
        nearby = (
            [p.stem for p in folder.glob("*.py")]
            + [p.name for p in folder.iterdir() if (p / "__init__.py").is_file()]
            if folder.is_dir()
            else []
        )
        top = module_name.partition(".")[0]
        hint = did_you_mean(top, nearby) if top not in nearby else ""
        raise RecipeError(
            f"{where} = {spec!r}: cannot import {module_name!r} from {folder} or the installed "
            f"packages ({exc}).{hint} Put the module next to the recipe or install it."
        ) from exc
    finally:
        if added:
            sys.path.remove(str(folder))
    function = getattr(module, attr, None)
    if not callable(function):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise RecipeError(
            f"{where} = {spec!r}: {module_name} has no function {attr!r}."
            f"{did_you_mean(attr, names)} Its functions and classes: {', '.join(sorted(names))}."
        )
    return function


def _check_item(split: Any, where: str, name: str) -> None:
    """The first item of a Dataset is an ``(input tensor, label)`` pair."""
    try:
        item = split[0] if hasattr(split, "__getitem__") else next(iter(split))
    except Exception as exc:  # the user's __getitem__ / __iter__ may raise anything
        raise RecipeError(
            f"{where}: reading the first item of the {name} split failed "
            f"({type(exc).__name__}: {exc})."
        ) from exc
    pair = isinstance(item, (tuple, list)) and len(item) == 2
    if pair and isinstance(item[0], Tensor):
        return
    if isinstance(item, dict):
        what = f"a dict with keys {sorted(map(str, item))}"
    elif isinstance(item, (tuple, list)):
        kinds = ", ".join(type(v).__name__ for v in item)
        what = f"a {type(item).__name__} of {len(item)} ({kinds})"
    else:
        what = f"a {type(item).__name__}"
    raise RecipeError(
        f"{where}: the {name} split's items are {what}; the command needs (input tensor, "
        "integer label) pairs. Return them from __getitem__ (for a dict: "
        "return item['image'], item['label'] with your keys), or wrap the Dataset."
    )


def as_tensors(split: Any, where: str, name: str) -> tuple[Tensor, Tensor]:
    """``(inputs, labels)`` of a split given as a tensor pair or a map-style ``Dataset``."""
    if (
        isinstance(split, (tuple, list))
        and len(split) == 2
        and all(isinstance(t, Tensor) for t in split)
    ):
        x, y = split
    elif isinstance(split, torch.utils.data.Dataset):
        _check_item(split, where, name)
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


def local_sources(recipe: Any) -> list[Path]:
    """The Python files of the recipe's folder its factories may import, to copy into the run.

    Empty without a ``[model]`` or ``[data]`` factory. Otherwise: every top-level ``*.py`` of
    the recipe's folder (the factory modules and the helpers beside them) and every ``*.py`` of
    a factory's top-level package when that package lives there. Installed packages are not
    copied (they are not part of the project folder).
    """
    specs = [s for s in (recipe.model_factory, recipe.data_factory) if s]
    if not specs:
        return []
    folder = Path(recipe.path).parent
    files = set(folder.glob("*.py"))
    for spec in specs:
        package = folder / spec.partition(":")[0].partition(".")[0]
        if (package / "__init__.py").is_file():
            files |= {p for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    return sorted(files)
