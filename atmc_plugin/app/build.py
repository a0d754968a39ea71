"""Turning a validated :class:`~atmc_plugin.app.recipe.Recipe` into objects: data and model.

The checks that use them (the model against the data, the weights, the constraint, the tool
sections) run once, in :func:`atmc_plugin.app.plan.make_plan`, before any training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ATMCError
from .recipe import Recipe, RecipeError


@dataclass(frozen=True)
class Data:
    """Train and test tensors (inputs in [0, 1]) and the shape of one example."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    x_val: Tensor | None = None
    y_val: Tensor | None = None
    train_dataset: Any = None  # the user's training Dataset, streamed as it is (augmentation)

    def train_set(self) -> Any:
        """What training streams: the user's Dataset, or the training tensors as one."""
        if self.train_dataset is not None:
            return self.train_dataset
        return torch.utils.data.TensorDataset(self.x_train, self.y_train)

    @property
    def example(self) -> Tensor:
        return self.x_train[:8]


def resolve_device(choice: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without CUDA is an error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RecipeError(
            f"device 'cuda' was asked for but torch {torch.__version__} sees no CUDA device; "
            "use --device cpu (or auto), or install a CUDA build of torch."
        )
    if choice not in ("cpu", "cuda"):
        raise RecipeError(f"device {choice!r}: choose auto, cpu or cuda.")
    return torch.device(choice)


def load_data(recipe: Recipe) -> Data:
    """The recipe's data set, cut to ``train_limit`` / ``test_limit`` (first examples)."""
    from . import datasets

    x_val = y_val = train_dataset = None
    try:
        if recipe.data_factory:
            x_tr, y_tr, x_val, y_val, x_te, y_te, train_dataset = _factory_data(recipe)
        elif recipe.dataset == "digits":
            x_tr, y_tr, x_te, y_te = datasets.load_digits(seed=0)
        else:
            x_tr, y_tr, x_te, y_te = datasets.load_cifar10(recipe.data_path or "")
    except ATMCError as exc:
        if isinstance(exc, RecipeError):
            raise
        raise RecipeError(f"{recipe.path}: [data] {exc}") from exc
    if recipe.train_limit:
        x_tr, y_tr = x_tr[: recipe.train_limit], y_tr[: recipe.train_limit]
        if train_dataset is not None:
            limit = min(recipe.train_limit, len(train_dataset))
            train_dataset = torch.utils.data.Subset(train_dataset, range(limit))
    if recipe.test_limit:
        x_te, y_te = x_te[: recipe.test_limit], y_te[: recipe.test_limit]
    return Data(x_tr, y_tr, x_te, y_te, x_val, y_val, train_dataset)


def _factory_data(recipe: Recipe) -> tuple[Any, ...]:
    """``[data] factory``: train, validation (or None) and test tensors, and the training
    Dataset itself when the factory returned one (training streams it, with its transforms)."""
    from .factories import as_tensors, load_callable

    where = f"{recipe.path}: [data] factory"
    function = load_callable(recipe.data_factory or "", recipe.path.parent, where)
    try:
        splits = function(**recipe.data_args)
    except TypeError as exc:
        raise RecipeError(f"{where}: {exc} (its arguments come from [data] args)") from exc
    if not isinstance(splits, (tuple, list)) or len(splits) not in (2, 3):
        raise RecipeError(
            f"{where}: returned {type(splits).__name__}; return (train, test) or "
            "(train, validation, test)."
        )
    names = ("train", "test") if len(splits) == 2 else ("train", "validation", "test")
    parts = {
        name: as_tensors(split, where, name) for name, split in zip(names, splits, strict=True)
    }
    val = parts.get("validation", (None, None))
    dataset = splits[0] if isinstance(splits[0], torch.utils.data.Dataset) else None
    return (*parts["train"], *val, *parts["test"], dataset)


def build_model(recipe: Recipe, data: Data) -> nn.Module:
    """A fresh model of the recipe's architecture (initialized from torch's global RNG)."""
    from . import models

    kwargs = dict(recipe.model_kwargs)
    in_channels = int(data.x_train.shape[1])
    if recipe.model_factory:
        return _factory_model(recipe, kwargs)
    try:
        if recipe.model_name == "digits_cnn":
            return models.DigitsCNN(**kwargs)
        if recipe.model_name == "mlp":
            kwargs.setdefault("in_features", int(data.x_train[0].numel()))
            if "hidden" in kwargs:
                kwargs["hidden"] = tuple(kwargs["hidden"])
            return models.MLP(**kwargs)
        kwargs.setdefault("in_channels", in_channels)
        return models.CifarResNet(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{recipe.path}: [model] {recipe.model_name}: {exc}") from exc


def _factory_model(recipe: Recipe, kwargs: dict[str, Any]) -> nn.Module:
    from .factories import load_callable

    where = f"{recipe.path}: [model] factory"
    function = load_callable(recipe.model_factory or "", recipe.path.parent, where)
    try:
        model = function(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{where}: {exc} (its arguments are [model]'s other keys)") from exc
    if not isinstance(model, nn.Module):
        raise RecipeError(f"{where}: returned {type(model).__name__}, not a torch.nn.Module.")
    return model
