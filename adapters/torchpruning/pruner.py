"""``ATMCPruner``: a Torch-Pruning pruner with ATMC inside, keeping the pruner's whole surface.

::

    pruner = tp.pruner.GroupNormPruner(model, example_inputs, importance=..., pruning_ratio=0.5,
                                       iterative_steps=5, ignored_layers=[model.fc])
    pruner = atmc_plugin.wrap(pruner, atmc_plugin.ATMCConfig(...), optimizer=optimizer)
    for step in range(pruner.iterative_steps):
        pruner.step()                       # channels removed; optimizer and ATMC state follow
        for x, y in loader:
            x_adv = pruner.perturb(x, y)
            loss = criterion(model(x_adv), y) + pruner.penalty()
            optimizer.zero_grad(); loss.backward()
            pruner.regularize(model, loss)  # the pruner's own regularizer (+ RGSM if enabled)
            optimizer.step()                # ATMC projections run from an optimizer hook
    pruner.finalize()
    report = pruner.report()
"""

from __future__ import annotations

import warnings
from collections.abc import Generator
from typing import Any

import torch
from torch import Tensor, nn

from atmc_plugin import ATMC, ATMCConfig, ConfigError, InputError
from atmc_plugin.adversary import model_device
from atmc_plugin.layers import select_layers
from atmc_plugin.modes import preserved_modes

from . import slicing
from .measure import check_inputs_device, count_macs, out_channels
from .preflight import (
    check_budget_not_undercut,
    check_no_prune_masks,
    check_output_layer_ignored,
    pruned_output_layers,
)
from .report import PruningReport, build_pruning_report
from .tracking import PrunerAwareImportance, TrackedGraph, TrackedGroup

__all__ = ["ATMCPruner", "PrunerAwareImportance", "pruned_output_layers", "refuse_factorized"]


def refuse_factorized(config: ATMCConfig) -> None:
    """Torch-Pruning slices weights; a factorized weight (``U V + C``) cannot be sliced.

    :raises ConfigError: ``constraint.factorize`` is on.
    """
    if config.constraint.factorize:
        raise ConfigError(
            "constraint.factorize = true cannot be combined with Torch-Pruning: the "
            "factorization re-parametrizes the weights Torch-Pruning slices. Use "
            "factorize = false (in a recipe: remove it from [atmc.constraint]), or compress "
            "the factorized model without structural pruning."
        )


class ATMCPruner:
    """Wraps a ``torch_pruning`` pruner: adversarial training plus ATMC's constraint.

    Every attribute not defined here is the wrapped pruner's (``importance``,
    ``current_step``, ``iterative_steps``, ``pruning_history`` ...). Every Torch-Pruning entry
    point that changes structure goes through the wrapper, so the optimizer and ATMC's state
    follow: ``step``, ``manual_prune_width``, and groups from ``DG.get_pruning_group`` /
    ``DG.get_all_groups``; ``reset`` after pruning began and ``load_pruning_history`` are
    refused (use :meth:`load_state_dict`).

    :param pruner: a ``tp.pruner.BasePruner`` (or subclass), before its first step.
    :param config: the ATMC configuration; its budget is against the dense (unpruned) model.
    :param optimizer: the user's optimizer; its state follows every channel removal.
    :param plugin_manager: optional plugin manager.
    :param example_inputs: optional inputs used for MAC counts in :meth:`report`.
    :param regularizer: optional extra regularizer with ``regularize(model)`` and
        ``update()`` (for example :class:`~atmc_plugin_adapters.torchpruning.rgsm.RGSM`).
    :param total_steps: optional number of optimizer steps of the whole loop; with
        ``constraint.ramp_steps`` unset, ATMC's own anneal then takes ``ramp_fraction`` of it.
        Without it the budget follows the pruner's ``iterative_steps`` alone (linearly from
        dense to the target at the last ``step()``), whatever the loop's length.

    Torch-Pruning's constructor traces the model in eval mode and leaves every module there;
    the wrapper puts the model back in training mode (``model.train()``), which is what a
    training loop expects. Re-freeze any module you keep in eval mode after wrapping.
    """

    def __init__(
        self,
        pruner: Any,
        config: ATMCConfig,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        plugin_manager: Any = None,
        example_inputs: Any = None,
        regularizer: Any = None,
        total_steps: int | None = None,
    ) -> None:
        model = pruner.model
        refuse_factorized(config)
        if pruner.current_step != 0:
            raise InputError(
                f"the pruner has already taken {pruner.current_step} step(s); wrap it before its "
                "first step so the budget refers to the dense model."
            )
        check_no_prune_masks(model)
        device = model_device(model)
        if example_inputs is not None:
            check_inputs_device(example_inputs, device)
        check_output_layer_ignored(pruner, model)
        self._pruner = pruner
        self._optimizer = optimizer
        self.example_inputs = example_inputs
        self.regularizer = regularizer
        layers = select_layers(model, config.constraint)
        self.dense_params = sum(p.numel() for p in model.parameters())
        self.dense_macs = count_macs(model, example_inputs)
        self.atmc = ATMC(
            model,
            config,
            optimizer=optimizer,
            plugin_manager=plugin_manager,
            total_steps=total_steps,
        )
        self.dense_numel = self.atmc.dense_numel
        self.target_budget = self.atmc.target_budget
        check_budget_not_undercut(pruner, model, config, layers, example_inputs)
        self._layer_names = {m: n for n, m in layers}
        importance = getattr(pruner, "importance", None)
        self._aware = importance if isinstance(importance, PrunerAwareImportance) else None
        self.dense_channels = {n: out_channels(m) for n, m in layers}
        self._untraced: set[str] = set()  # parameters whose slicing could not be traced
        names = {id(p): n for n, p in model.named_parameters()}
        self._unwrapped = [  # (name, dim) of the parameters Torch-Pruning slices directly
            (names[id(param)], int(dim))
            for param, dim in getattr(pruner.DG, "unwrapped_parameters", None) or []
            if id(param) in names
        ]
        self._schedule_budget()
        if isinstance(self._aware, PrunerAwareImportance):
            self._aware.bind(self)
        model.train()  # Torch-Pruning's tracing left every module in eval mode

    # -- the pruner's surface ------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_pruner":
            raise AttributeError(name)
        return getattr(self._pruner, name)

    @property
    def DG(self) -> TrackedGraph:
        """The pruner's dependency graph; groups it builds prune through this wrapper."""
        return TrackedGraph(self._pruner.DG, self)

    def manual_prune_width(
        self, layer: nn.Module, pruning_fn: Any, pruning_ratios_or_idxs: float | list[int]
    ) -> None:
        """As Torch-Pruning's ``manual_prune_width``: prune ``layer``'s channels by a ratio
        (the least important, by the pruner's importance) or by indices; the optimizer and
        ATMC's state follow."""
        graph = self._pruner.DG
        if isinstance(pruning_ratios_or_idxs, float):
            if graph.is_out_channel_pruning_fn(pruning_fn):
                channels = graph.get_out_channels(layer)
            else:
                channels = graph.get_in_channels(layer)
            everything = graph.get_pruning_group(layer, pruning_fn, list(range(channels)))
            order = torch.argsort(self._pruner.estimate_importance(everything))
            idxs = order[: int(channels * (1 - pruning_ratios_or_idxs))].tolist()
        else:
            idxs = list(pruning_ratios_or_idxs)
        with preserved_modes(self.model):
            self._prune_group(graph.get_pruning_group(layer, pruning_fn, idxs))

    def reset(self) -> None:
        """Refused once pruning has begun: restarting Torch-Pruning's schedule on a pruned
        model would prune again from the current widths against a budget set for the dense one.

        :raises InputError: the pruner has stepped.
        """
        if int(self._pruner.current_step) != 0 or self._pruner.pruning_history():
            raise InputError(
                f"reset() at step {self._pruner.current_step}: the model is already pruned and "
                "ATMC's budget refers to its dense weights. Build a fresh model and pruner and "
                "wrap them again."
            )
        self._pruner.reset()

    def load_pruning_history(self, pruning_history: Any) -> None:
        """Refused: replaying a history behind ATMC's back leaves the optimizer and ATMC state
        on the old shapes. Use :meth:`load_state_dict` (history and ATMC state together).

        :raises InputError: always.
        """
        raise InputError(
            "load_pruning_history on a wrapped pruner would leave the optimizer and ATMC on the "
            "old shapes; save with pruner.state_dict() and resume with "
            "pruner.load_state_dict(state) on a freshly wrapped pruner of a fresh model."
        )

    @property
    def layer_names(self) -> dict[nn.Module, str]:
        """The compressed conv/linear layers and their names (a copy)."""
        return dict(self._layer_names)

    def layer_name(self, module: nn.Module) -> str | None:
        """The qualified name of a layer ATMC compresses, or ``None`` for other modules."""
        return self._layer_names.get(module)

    @property
    def pruner(self) -> Any:
        """The wrapped Torch-Pruning pruner."""
        return self._pruner

    @property
    def model(self) -> nn.Module:
        model: nn.Module = self._pruner.model
        return model

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        return self._optimizer

    def step(self, interactive: bool = False) -> Generator[Any, None, None] | None:
        """One pruning step, as ``pruner.step``; ``interactive=True`` yields the groups.

        Groups yielded interactively are Torch-Pruning's, wrapped so that ``group.prune()``
        also slices the optimizer state and ATMC's state.
        """
        if interactive:
            return self._interactive_step()
        for group in self._interactive_step():
            group.prune()
        return None

    def _interactive_step(self) -> Generator[Any, None, None]:
        with preserved_modes(self.model):
            if self._aware is not None:
                self._aware.prepare()
            groups = self._pruner.step(interactive=True)
            for group in groups or ():
                yield TrackedGroup(group, self)
        self._after_step()

    def _prune_group(self, group: Any, *args: Any, **kwargs: Any) -> None:
        removed: dict[nn.Module, dict[bool, list[int]]] = {}
        removed_params: dict[int, list[int]] = {}  # Torch-Pruning's unwrapped parameters
        for dep, idxs in group:
            target = dep.target.module
            if isinstance(target, nn.Parameter):
                removed_params.setdefault(id(target), []).extend(int(i) for i in idxs)
            elif isinstance(target, nn.Module):
                out = bool(self._pruner.DG.is_out_channel_pruning_fn(dep.handler))
                removed.setdefault(target, {}).setdefault(out, []).extend(int(i) for i in idxs)
        before = slicing.snapshot(self.model)
        group.prune(*args, **kwargs)
        for change in slicing.changes(before, removed, removed_params):
            if change.dim is None and change.name not in self._untraced:
                self._untraced.add(change.name)
                warnings.warn(
                    f"could not trace how Torch-Pruning sliced {change.name} "
                    f"{tuple(change.old.shape)} -> {tuple(change.new.shape)}; its optimizer and "
                    "ATMC state start afresh at each such change (said once per parameter).",
                    stacklevel=4,
                )
            self._follow(change)

    def _follow(self, change: slicing.ParamChange) -> None:
        if self._aware is not None:
            self._aware.follow(change)
        if self._optimizer is not None:
            slicing.slice_optimizer(self._optimizer, change)
        if change.name in self.atmc.names:
            if change.dim is None:
                self.atmc.reset(change.name)
            elif change.dim >= 0 and change.keep is not None:
                self.atmc.index_select(change.name, change.dim, change.keep)

    def _after_step(self) -> None:
        self._pruner.update_regularizer()
        if self.regularizer is not None:
            self.regularizer.update()
        self._schedule_budget()
        stats = {
            "params": sum(p.numel() for p in self.model.parameters()),
            "weights": self._remaining_weights(),
            "budget": self.atmc.budget,
        }
        self.atmc.plugin_manager.hook.atmc_after_pruning_step(
            pruner=self, step=self._pruner.current_step, stats=stats
        )

    def _remaining_weights(self) -> int:
        return sum(p.numel() for p in self.atmc.parameters().values())

    def _schedule_budget(self) -> None:
        """Hold ATMC's budget at or above a linear schedule from dense to the target over the
        pruner's steps (ATMC's own anneal may keep it higher still)."""
        if self.target_budget is None:
            return
        steps = max(1, int(self._pruner.iterative_steps))
        done = min(int(self._pruner.current_step), steps)
        budget = round(self.dense_numel - (self.dense_numel - self.target_budget) * done / steps)
        self.atmc.set_budget_floor(
            max(self.target_budget, budget),
            reason=f"Torch-Pruning has taken {done} of its {steps} iterative_steps",
        )
        if done == steps and self._remaining_weights() < self.target_budget:
            warnings.warn(
                f"structural pruning left {self._remaining_weights()} weights, fewer than the "
                f"ATMC budget of {self.target_budget}: the elementwise budget no longer binds. "
                "Lower constraint.density or the pruner's pruning_ratio.",
                stacklevel=3,
            )

    # -- ATMC --------------------------------------------------------------------------------
    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        """Adversarial batch from the configured attack (``x`` when there is none)."""
        return self.atmc.perturb(x, y)

    def penalty(self) -> Tensor:
        """ADMM term to add to the loss (0 without quantization)."""
        return self.atmc.penalty()

    def regularize(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped pruner's own ``regularize`` (its signature), then the extra regularizer."""
        result = self._pruner.regularize(*args, **kwargs)
        if self.regularizer is not None:
            model = args[0] if args else kwargs.get("model", self.model)
            self.regularizer.regularize(model)
        return result

    def finalize(self) -> PruningReport:
        """Hard projection of the weights left by pruning; returns :meth:`report`."""
        self.atmc.finalize()
        return self.report()

    def report(self) -> PruningReport:
        """Structural (channels, params, MACs) and elementwise (nnz, bits) compression."""
        return build_pruning_report(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` on a freshly wrapped pruner of a fresh dense model.

        The pruning history is replayed group by group through this wrapper (so the optimizer
        and ATMC follow the structure), then the step counter and ATMC's state are restored.
        Load the model's and the optimizer's state dicts afterwards.

        :raises InputError: the pruner has already stepped, or the state is not a wrapper state.
        """
        if not isinstance(state, dict) or "pruning_history" not in state:
            raise InputError("not an ATMCPruner state (expected the output of state_dict()).")
        if int(self._pruner.current_step) != 0 or self._pruner.pruning_history():
            raise InputError(
                "load_state_dict needs a freshly wrapped pruner on a fresh dense model; this "
                f"one is at step {self._pruner.current_step}."
            )
        graph = self._pruner.DG
        modules = dict(self.model.named_modules())
        with preserved_modes(self.model):
            if int(state["current_step"]) > 0:
                # Torch-Pruning records each scope's initial channel count during its first
                # step; walk one interactive step on the dense model without pruning any group
                # so later steps measure their ratios from the dense widths, as in the original.
                for _group in self._pruner.step(interactive=True) or ():
                    pass
                self._pruner.current_step = 0
            for layer, is_out, idxs in state["pruning_history"]:
                if layer not in modules:
                    raise InputError(
                        f"the pruning history names {layer!r}, which this model does not have; "
                        "build the same architecture as the one that was pruned."
                    )
                handler = graph.get_pruner_of_module(modules[layer])
                fn = handler.prune_out_channels if is_out else handler.prune_in_channels
                self._prune_group(graph.get_pruning_group(modules[layer], fn, list(idxs)))
        self._pruner.current_step = int(state["current_step"])
        self._pruner.update_regularizer()
        if self.regularizer is not None:
            self.regularizer.update()
        self.atmc.load_state_dict(state["atmc"])

    def state_dict(self) -> dict[str, Any]:
        """Pruning history, unwrapped parameters (name, dim) and ATMC state (plain data,
        ``weights_only`` loadable)."""
        return {
            "pruning_history": self._pruner.pruning_history(),
            "current_step": int(self._pruner.current_step),
            "unwrapped": [list(entry) for entry in self._unwrapped],
            "atmc": self.atmc.state_dict(),
        }
