"""The ``[torch_pruning]`` recipe section as a backend of the ``atmc`` command.

The section names a Torch-Pruning pruner class and its keyword arguments (``pruner``,
``importance``, ``ignored_layers`` by module name, ``unwrapped_parameters`` as ``[name, dim]``
pairs, then anything the class takes). The
pruner is wrapped with ATMC; its ``iterative_steps`` are spread evenly over the compress
stage.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from atmc_plugin import ATMC, ConfigError
from atmc_plugin.backend import BackendContext, MakeOptimizer
from atmc_plugin.errors import InternalError
from atmc_plugin.report import CompressionReport
from atmc_plugin.settings import Settings

from .pruner import ATMCPruner, pruned_output_layers, refuse_factorized

log = logging.getLogger(__name__)
SECTION = "torch_pruning"
OUR_IMPORTANCES = ("ADMMProxyImportance", "RobustTaylorImportance")


def checked_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The ``[torch_pruning]`` section with its defaults, its values checked (the pruner's own
    keywords are checked against its signature when it is built).

    :raises ConfigError: naming the key, the value and the fix.
    """
    s = Settings(SECTION, settings)
    if "pruner" not in s.data:
        raise s.error("pruner", None, "name a torch_pruning.pruner class, e.g. 'GroupNormPruner'")
    out = dict(s.data)
    s.string("pruner", "")
    out["importance"] = s.string("importance", "ADMMProxyImportance")
    out["pruning_ratio"] = s.number("pruning_ratio", 0.5, high=0.99)
    out["iterative_steps"] = s.integer("iterative_steps", 1, low=1)
    out["ignored_layers"] = s.strings("ignored_layers")
    return out


def build_pruner(settings: Mapping[str, Any], model: nn.Module, example: Tensor) -> Any:
    """The Torch-Pruning pruner ``settings`` names, on ``model`` (not yet wrapped).

    :raises ConfigError: an unknown class, importance or layer, or arguments it refuses.
    """
    import torch_pruning as tp

    section = dict(settings)
    name = section.pop("pruner")
    cls = getattr(tp.pruner, name, None)
    if not isinstance(cls, type):
        choices = [n for n in dir(tp.pruner) if n.endswith("Pruner")]
        raise ConfigError(
            f"[{SECTION}] pruner = {name!r} is not a torch_pruning.pruner class; choose one of "
            f"{', '.join(choices)}."
        )
    _check_keywords(cls, section)
    importance = build_importance(section.pop("importance"))
    section["unwrapped_parameters"] = _unwrapped(section.pop("unwrapped_parameters", None), model)
    modules = dict(model.named_modules())
    ignored = []
    for layer in section.pop("ignored_layers", []):
        if layer not in modules:
            raise ConfigError(
                f"[{SECTION}] ignored_layers names {layer!r}, which is not a module of "
                f"{type(model).__name__}; its layers: {', '.join(list(modules)[1:8])}..."
            )
        ignored.append(modules[layer])
    try:
        return cls(model, example, importance=importance, ignored_layers=ignored, **section)
    except TypeError as exc:
        raise ConfigError(f"[{SECTION}] {name}: {exc}") from exc


def _check_keywords(cls: type, section: Mapping[str, Any]) -> None:
    """Every key of the section is a keyword of the pruner class (with "did you mean")."""
    from atmc_plugin.errors import did_you_mean

    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # the class takes anything: its own constructor is the judge
    known = {n for n in params if n not in ("model", "example_inputs")}
    known |= {"pruner", "importance"}
    for key in section:
        if key not in known:
            raise ConfigError(
                f"[{SECTION}] {key} = {section[key]!r}: {cls.__name__} has no argument "
                f"{key!r}.{did_you_mean(key, known)} Its arguments: "
                f"{', '.join(sorted(known - {'pruner'}))}."
            )


def _unwrapped(entries: Any, model: nn.Module) -> list[tuple[nn.Parameter, int]] | None:
    """``unwrapped_parameters = [["cls_token", 2], ...]``: parameters by name, with the
    dimension Torch-Pruning slices (class tokens, position embeddings, layer scales)."""
    if entries is None:
        return None
    params = dict(model.named_parameters())
    out = []
    for entry in entries if isinstance(entries, list) else [entries]:
        ok = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], int)
        if not ok or entry[0] not in params or not 0 <= entry[1] < params[entry[0]].dim():
            raise ConfigError(
                f"[{SECTION}] unwrapped_parameters entry {entry!r}: expected [name, dim] with a "
                f"parameter of {type(model).__name__} and one of its dimensions; direct "
                f"parameters: {', '.join(n for n in params if '.' not in n) or 'none'}."
            )
        out.append((params[entry[0]], entry[1]))
    return out


def build_importance(name: str) -> Any:
    """An importance by class name: ours, or one of ``torch_pruning.importance``."""
    import torch_pruning as tp

    from . import importance as ours

    cls = getattr(ours, name, None) if name in OUR_IMPORTANCES else None
    if cls is None:
        cls = getattr(tp.importance, name, None)
    base = tp.importance.Importance
    is_tp = isinstance(cls, type) and issubclass(cls, base) and cls is not base
    if not (is_tp or (name in OUR_IMPORTANCES and isinstance(cls, type))):
        raise ConfigError(
            f"[{SECTION}] importance = {name!r} is neither an atmc-plugin importance "
            "(ADMMProxyImportance, RobustTaylorImportance) nor a torch_pruning.importance "
            "class (e.g. GroupMagnitudeImportance)."
        )
    if name == "RobustTaylorImportance":
        raise ConfigError(
            f"[{SECTION}] importance = 'RobustTaylorImportance' needs batches from Python; use "
            "it through atmc_plugin.wrap in your own loop, or pick ADMMProxyImportance here."
        )
    try:
        return cls()  # type: ignore[misc]
    except TypeError as exc:  # an abstract base or one that needs arguments
        raise ConfigError(
            f"[{SECTION}] importance = {name!r} cannot be built without arguments ({exc}); "
            "pick a concrete importance such as GroupMagnitudeImportance."
        ) from exc


class PruningBackend:
    """A wrapped Torch-Pruning pruner (:class:`ATMCPruner`) driven by the command.

    :param settings: the ``[torch_pruning]`` section.
    :param context: the run's context.
    """

    section = SECTION

    def __init__(self, settings: Mapping[str, Any], context: BackendContext) -> None:
        self.settings = checked_settings(settings)
        refuse_factorized(context.atmc)
        self.context = context
        self.pruner: ATMCPruner | None = None
        self._regularize_takes_loss = False  # decided once in prepare, not per step

    def check(self, model: nn.Module) -> None:
        pruner = build_pruner(self.settings, model, self.context.example)
        left = pruned_output_layers(pruner, model)
        if left:
            names = {m: n for n, m in model.named_modules()}
            ignored = [names[m] for m in pruner.ignored_layers if m in names]
            raise ConfigError(
                f"[{SECTION}] ignored_layers = {ignored!r} leaves {left[0]!r}, the layer whose "
                "outputs are the model's output (usually the classifier), to Torch-Pruning: it "
                f"would remove classes. Add it: ignored_layers = {[*ignored, left[0]]!r}."
            )

    def prepare(
        self, model: nn.Module, make_optimizer: MakeOptimizer
    ) -> tuple[nn.Module, ATMC, torch.optim.Optimizer]:
        example = self.context.example
        pruner = build_pruner(self.settings, model, example)
        optimizer = make_optimizer(model)
        self.pruner = ATMCPruner(
            pruner,
            self.context.atmc,
            optimizer=optimizer,
            example_inputs=example,
            plugin_manager=self.context.plugin_manager,
        )
        self._regularize_takes_loss = "loss" in inspect.signature(pruner.regularize).parameters
        return model, self.pruner.atmc, optimizer

    def _pruner(self) -> ATMCPruner:
        if self.pruner is None:
            raise InternalError("the pruning backend was not prepared.")
        return self.pruner

    def on_epoch(self, epoch: int, epochs: int) -> None:
        pruner = self._pruner()
        steps = int(pruner.iterative_steps)
        while pruner.current_step < steps and epoch >= math.floor(
            pruner.current_step * epochs / steps
        ):
            pruner.step()
            log.info(
                "pruning step %d/%d: %d parameters",
                pruner.current_step,
                steps,
                sum(p.numel() for p in pruner.model.parameters()),
            )

    def before_step(self, model: nn.Module, loss: Tensor) -> None:
        """The pruner's own regularizer; Torch-Pruning's base signature takes the loss too."""
        if self._regularize_takes_loss:
            self._pruner().regularize(model, loss)
        else:
            self._pruner().regularize(model)

    def finalize(self, model: nn.Module) -> nn.Module:
        self._pruner().finalize()
        return model

    def report(self) -> tuple[CompressionReport, dict[str, Any]]:
        report = self._pruner().report()
        return report.elementwise, report.to_dict()

    def state_dict(self) -> dict[str, Any]:
        return self._pruner().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pruner().load_state_dict(state)

    def rebuild(self, model: nn.Module, state: dict[str, Any]) -> None:
        from .checkpoint import rebuild_structure

        rebuild_structure(model, self.context.example.to(next(model.parameters()).device), state)
