"""Saving and loading pruned, ATMC-compressed models without pickle.

A checkpoint holds the state dict, Torch-Pruning's pruning history and ATMC's state; all are
plain tensors and containers, so ``torch.load(weights_only=True)`` reads it. Loading rebuilds the
pruned structure on a fresh model: new dependency graph, ``load_pruning_history``, then the
weights. Files are written atomically (temporary file + rename).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from atmc_plugin import InputError
from atmc_plugin.adversary import model_device
from atmc_plugin.io import save_atomically, seal, unseal
from atmc_plugin.modes import preserved_modes

from .measure import check_inputs_device

if TYPE_CHECKING:
    from .pruner import ATMCPruner

FORMAT = "atmc-torch-pruning"
VERSION = 1


def save_pruned(path: str | Path, pruner: ATMCPruner, extra: dict[str, Any] | None = None) -> None:
    """Write model weights, pruning history and ATMC state to ``path`` atomically."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": pruner.model.state_dict(),
        "pruner": pruner.state_dict(),
        "config": pruner.atmc.config.to_dict(),
        "extra": extra or {},
    }
    save_atomically(seal(payload), path)


def load_pruned(path: str | Path, model: nn.Module, example_inputs: Any) -> dict[str, Any]:
    """Rebuild the pruned structure on ``model`` (a fresh dense instance) and load the weights.

    :returns: the checkpoint's ``pruner`` (pruning history, ATMC state), ``config`` and
        ``extra`` entries; pass ``["pruner"]["atmc"]`` to ``ATMC.load_state_dict`` to resume.
    :raises InputError: not such a checkpoint, wrong device of ``example_inputs``, or a model
        that does not match the checkpoint (tried on a copy first: ``model`` is left unchanged).
    """
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises many types, pickle's UnpicklingError among them
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise InputError(
            f"cannot read checkpoint {str(path)!r} ({type(exc).__name__}: {first}): it is "
            "missing, corrupt, or holds pickled objects that a weights-only load refuses."
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{str(path)!r} is not an atmc-plugin Torch-Pruning checkpoint.")
    unseal(payload, path)
    for key in ("model", "pruner", "config", "extra"):
        if key not in payload:
            raise InputError(f"{str(path)!r} lacks its {key!r} entry; it is not a full checkpoint.")
    device = model_device(model)
    check_inputs_device(example_inputs, device)
    weights = {k: v.to(device) for k, v in payload["model"].items()}
    # Rehearse on a copy so that a mismatching checkpoint leaves the user's model untouched.
    try:
        rehearsal = copy.deepcopy(model)
        rebuild_structure(rehearsal, example_inputs, payload["pruner"])
        rehearsal.load_state_dict(weights)
    except (RuntimeError, KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
        raise InputError(
            f"checkpoint {str(path)!r} does not fit this model ({type(model).__name__}): {exc}. "
            "Build the same architecture as the one that was pruned."
        ) from exc
    rebuild_structure(model, example_inputs, payload["pruner"])
    model.load_state_dict(weights)
    return {k: payload[k] for k in ("pruner", "config", "extra")}


def rebuild_structure(model: nn.Module, example_inputs: Any, state: dict[str, Any]) -> None:
    """Replay the pruning history of an :meth:`ATMCPruner.state_dict` on a fresh dense model,
    with the same unwrapped parameters (class tokens, position embeddings ...) and dims."""
    import torch_pruning as tp

    params = dict(model.named_parameters())
    unwrapped = [(params[name], int(dim)) for name, dim in state.get("unwrapped", [])]
    with preserved_modes(model):
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=example_inputs, unwrapped_parameters=unwrapped or None
        )
        graph.load_pruning_history(state["pruning_history"])
