"""Turning a validated :class:`~atmc_plugin.app.recipe.Recipe` into objects: data, model, tools.

Everything that can fail on user input (missing data folder, unknown pruner class, an INC
config INC itself rejects, an unavailable device) fails in :func:`check_recipe`, before any
training starts.
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

    try:
        if recipe.dataset == "digits":
            parts = datasets.load_digits(seed=0)
        else:
            parts = datasets.load_cifar10(recipe.data_path or "")
    except ATMCError as exc:
        raise RecipeError(f"{recipe.path}: [data] {exc}") from exc
    x_tr, y_tr, x_te, y_te = parts
    if recipe.train_limit:
        x_tr, y_tr = x_tr[: recipe.train_limit], y_tr[: recipe.train_limit]
    if recipe.test_limit:
        x_te, y_te = x_te[: recipe.test_limit], y_te[: recipe.test_limit]
    return Data(x_tr, y_tr, x_te, y_te)


def build_model(recipe: Recipe, data: Data) -> nn.Module:
    """A fresh model of the recipe's architecture (initialized from torch's global RNG)."""
    from . import models

    kwargs = dict(recipe.model_kwargs)
    in_channels = int(data.x_train.shape[1])
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


def build_pruner(recipe: Recipe, model: nn.Module, example: Tensor) -> Any:
    """The Torch-Pruning pruner the ``[torch_pruning]`` section names (not yet wrapped)."""
    import torch_pruning as tp

    section = dict(recipe.torch_pruning or {})
    name = section.pop("pruner")
    cls = getattr(tp.pruner, name, None)
    if not isinstance(cls, type):
        choices = [n for n in dir(tp.pruner) if n.endswith("Pruner")]
        raise RecipeError(
            f"{recipe.path}: [torch_pruning] pruner = {name!r} is not a torch_pruning.pruner "
            f"class; choose one of {', '.join(choices)}."
        )
    importance = _importance(recipe, section.pop("importance"))
    modules = dict(model.named_modules())
    ignored = []
    for layer in section.pop("ignored_layers"):
        if layer not in modules:
            raise RecipeError(
                f"{recipe.path}: [torch_pruning] ignored_layers names {layer!r}, which is not a "
                f"module of {type(model).__name__}; its layers: {', '.join(list(modules)[1:8])}..."
            )
        ignored.append(modules[layer])
    try:
        return cls(model, example, importance=importance, ignored_layers=ignored, **section)
    except TypeError as exc:
        raise RecipeError(f"{recipe.path}: [torch_pruning] {name}: {exc}") from exc


def _importance(recipe: Recipe, name: str) -> Any:
    import torch_pruning as tp
    from atmc_plugin_adapters import torchpruning as adapter

    ours = ("ADMMProxyImportance", "RobustTaylorImportance")
    cls = getattr(adapter, name, None) if name in ours else getattr(tp.importance, name, None)
    base = tp.importance.Importance
    is_tp = isinstance(cls, type) and issubclass(cls, base) and cls is not base
    if not (is_tp or (name in ours and isinstance(cls, type))):
        raise RecipeError(
            f"{recipe.path}: [torch_pruning] importance = {name!r} is neither an atmc-plugin "
            "importance (ADMMProxyImportance, RobustTaylorImportance) nor a "
            "torch_pruning.importance class (e.g. GroupMagnitudeImportance)."
        )
    if name == "RobustTaylorImportance":
        raise RecipeError(
            f"{recipe.path}: [torch_pruning] importance = 'RobustTaylorImportance' needs batches "
            "from Python; use it through atmc_plugin.wrap in your own loop, or pick "
            "ADMMProxyImportance here."
        )
    if cls is None:  # unreachable: checked above (keeps the type checker informed)
        raise RecipeError(f"{recipe.path}: [torch_pruning] importance = {name!r} is unknown.")
    try:
        return cls()
    except TypeError as exc:  # an abstract base or one that needs arguments
        raise RecipeError(
            f"{recipe.path}: [torch_pruning] importance = {name!r} cannot be built without "
            f"arguments ({exc}); pick a concrete importance such as GroupMagnitudeImportance."
        ) from exc


def inc_configs(recipe: Recipe) -> dict[str, Any]:
    """INC config objects from the ``[inc]`` dict form (``atmc`` and ``static``)."""
    if not recipe.inc:
        return {}
    from atmc_plugin_adapters.inc import ATMCQuantConfig
    from atmc_plugin_adapters.inc.pt2e import static_config_from_dict

    out: dict[str, Any] = {}
    for algo, settings in recipe.inc.items():
        try:
            if algo == "atmc":
                config = ATMCQuantConfig.from_dict(settings)
                config.validate()
            else:
                config = static_config_from_dict(settings)
        except (TypeError, ValueError, KeyError) as exc:  # ConfigError is a ValueError
            raise RecipeError(f"{recipe.path}: [inc.{algo}] {exc}") from exc
        if algo == "atmc" and config.backend == "rtn":
            raise RecipeError(
                f"{recipe.path}: [inc.atmc] backend = 'rtn'"
                f"{'' if 'backend' in settings else ' (the default)'}: INC's RTN "
                "replaces the Linear layers with weight-only modules, which the "
                "fine-tuning stage cannot train and final.pt cannot rebuild. Set "
                "backend = 'pt2e' (ATMC on INC's int8 grid, add [inc.static] to ship "
                "int8) or backend = 'none'; for RTN, call quantize(model, "
                "ATMCQuantConfig(backend='rtn'), run_fn=...) from Python."
            )
        out[algo] = config
    return out


def check_recipe(recipe: Recipe, device: torch.device) -> Data:
    """Everything that can fail on the recipe, tried before any training; returns the data."""
    data = load_data(recipe)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe, data).to(device)
    example = data.example.to(device)
    try:
        with torch.no_grad():
            model.eval()(example)
    except RuntimeError as exc:
        raise RecipeError(
            f"{recipe.path}: [model] {recipe.model_name} does not accept the {recipe.dataset} "
            f"inputs of shape {tuple(example.shape[1:])}: {exc}"
        ) from exc
    if recipe.torch_pruning is not None:
        build_pruner(recipe, model, example)
    inc_configs(recipe)
    _check_constraint_fits(recipe, model)
    return data


def _check_constraint_fits(recipe: Recipe, model: nn.Module) -> None:
    """The constraint against this model (layers selected, budget within the weights), on a
    copy, so that a bad include pattern or nnz fails before pre-training."""
    import copy

    from ..core import ATMC

    try:
        ATMC(copy.deepcopy(model), recipe.atmc)
    except ATMCError as exc:
        raise RecipeError(f"{recipe.path}: [atmc] {exc}") from exc
    inc_atmc = inc_configs(recipe).get("atmc")
    if inc_atmc is not None:  # its attack (maybe a plugin's) and budget, on this model
        ops = [name for name, _type in inc_atmc.get_model_info(model)]
        try:
            ATMC(copy.deepcopy(model), inc_atmc.to_atmc(ops))
        except ATMCError as exc:
            raise RecipeError(f"{recipe.path}: [inc.atmc] {exc}") from exc
