"""Pre-flight checks of ``atmc_plugin.wrap(pruner, config)``, run before anything changes.

Each refuses (or warns about) a pruner the wrapper cannot compress as the user expects: masks
left by ``torch.nn.utils.prune``, the classifier left out of ``ignored_layers``, and a
structural schedule that already meets ATMC's budget (a dry run on a copy).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

from torch import nn

from atmc_plugin import ATMCConfig, InputError
from atmc_plugin.layers import layer_weight
from atmc_plugin.modes import preserved_modes


def check_budget_not_undercut(
    pruner: Any,
    model: nn.Module,
    config: ATMCConfig,
    layers: list[tuple[str, nn.Module]],
    example_inputs: Any,
) -> None:
    """Dry-run the structural schedule on a copy; warn when it already meets the budget.

    A user who asks for at most ``k`` non-zeros and whose channel pruning leaves fewer has a
    satisfied constraint: the elementwise budget is then inactive, which is worth saying (with
    the numbers) but is not an error.

    Needs ``example_inputs``. A fresh magnitude pruner with the same ratio, steps, scope and
    ignored layers prunes a deep copy of the model: exact for local pruning, an estimate for
    global pruning (other importances may pick other layers). Per-layer ratio dicts are skipped.
    """
    c = config.constraint
    if example_inputs is None or not c.sparse or getattr(pruner, "pruning_ratio_dict", None):
        return

    import torch_pruning as tp

    dense = sum(layer_weight(m).numel() for _, m in layers)
    budget = c.budget_for(dense)
    if budget is None:
        return
    clone = copy.deepcopy(model)
    by_name = dict(clone.named_modules())
    names = {m: n for n, m in model.named_modules()}
    ignored = [by_name[names[m]] for m in pruner.ignored_layers if m in names]
    with preserved_modes(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trial = tp.pruner.BasePruner(
            clone,
            example_inputs,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=pruner.pruning_ratio,
            iterative_steps=pruner.iterative_steps,
            global_pruning=pruner.global_pruning,
            max_pruning_ratio=pruner.max_pruning_ratio,
            round_to=pruner.round_to,
            isomorphic=pruner.isomorphic,
            ignored_layers=ignored,
        )
        for _ in range(pruner.iterative_steps):
            trial.step()
    left = sum(layer_weight(by_name[n]).numel() for n, _ in layers)
    if left <= budget:
        scope = "estimated for global pruning" if pruner.global_pruning else "exact"
        warnings.warn(
            f"structural pruning (pruning_ratio = {pruner.pruning_ratio}) leaves {left} of the "
            f"{dense} compressible weights ({scope}), within the ATMC budget of {budget} "
            f"({budget / dense:.3g} of dense): the elementwise sparsity budget will be inactive "
            "once the pruner's steps are done (quantization and the attack still apply). Lower "
            "constraint.density (or nnz) below the structural ratio if you want elementwise "
            "sparsity too.",
            stacklevel=3,
        )


def check_no_prune_masks(model: nn.Module) -> None:
    from torch.nn.utils import prune

    if prune.is_pruned(model):
        raise InputError(
            "the model holds torch.nn.utils.prune masks (weight_orig / weight_mask), which break "
            "Torch-Pruning's step(). Apply them with torch.nn.utils.prune.remove(module, 'weight') "
            "first; ATMC provides the elementwise sparsity itself."
        )


def pruned_output_layers(pruner: Any, model: nn.Module) -> list[str]:
    """Names of the layers producing the model's output whose outputs ``pruner`` would prune.

    An output layer is a Linear or convolution of Torch-Pruning's traced graph that feeds
    nothing else: almost always the classifier. Read off the pruner's own groups, so a layer
    Torch-Pruning would not prune is not listed.
    """
    graph = pruner.DG
    outputs = {
        module
        for module, node in graph.module2node.items()
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and not node.outputs
    }
    outputs -= set(pruner.ignored_layers)
    if not outputs:
        return []
    groups = graph.get_all_groups(
        ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
    )
    pruned = {
        dep.target.module
        for group in groups
        for dep, _idxs in group
        if dep.target.module in outputs and graph.is_out_channel_pruning_fn(dep.handler)
    }
    return sorted(n for n, m in model.named_modules() if m in pruned)


def check_output_layer_ignored(pruner: Any, model: nn.Module) -> None:
    """Refuse a pruner that would remove outputs of the model's output layer.

    Pruning the classifier's outputs leaves fewer logits than classes, and training fails
    later (``Target 7 is out of bounds``) or silently scores the wrong classes. Torch-Pruning
    silently drops types such as ``nn.Linear`` given in ``ignored_layers``, the usual cause.

    :raises InputError: an output layer's outputs are prunable.
    """
    names = pruned_output_layers(pruner, model)
    if not names:
        return
    layer = model.get_submodule(names[0])
    size = getattr(layer, "out_features", getattr(layer, "out_channels", "?"))
    raise InputError(
        f"Torch-Pruning would prune the outputs of {names[0]!r} ({type(layer).__name__} with "
        f"{size} outputs that are the model's output, usually the classifier): the model would "
        "then predict fewer classes than the labels hold. Pass the module itself in "
        f"ignored_layers, e.g. ignored_layers=[model.{names[0]}] (Torch-Pruning silently drops "
        "types such as nn.Linear there), and build the pruner again. Nothing was changed."
    )
