"""``[model] weights = "path"``: start a run from the user's own trained weights.

The file is read with ``torch.load(weights_only=True)`` and may be a plain ``state_dict``
(``torch.save(model.state_dict(), path)``), a dict holding one under ``"model"`` or
``"state_dict"``, or a run's ``checkpoints/dense.pt`` (its content checksum is verified; the
recipe that wrote it may differ, which is the point: a fixed recipe reuses the pre-training).
Every key and shape is checked against the recipe's model before any work.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ATMCError
from ..io import unseal
from .recipe import RecipeError
from .rundir import CHECKPOINT_FORMAT


def read_weights(path: Path, where: str) -> dict[str, Tensor]:
    """The state dict held by ``path``.

    :raises RecipeError: a missing, unreadable or pickled file, or one with no state dict.
    """
    try:
        payload: Any = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError as exc:
        raise RecipeError(f"{where} = {str(path)!r} does not exist.") from exc
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        raise RecipeError(
            f"{where} = {str(path)!r} cannot be read with torch.load(weights_only=True) "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}). "
            "Save the weights with torch.save(model.state_dict(), path)."
        ) from exc
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        try:
            payload = unseal(dict(payload), path)
        except ATMCError as exc:
            raise RecipeError(f"{where}: {exc}") from exc
    for key in ("model", "state_dict"):
        if isinstance(payload, Mapping) and isinstance(payload.get(key), Mapping):
            payload = payload[key]
            break
    ok = isinstance(payload, Mapping) and payload
    if not ok or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in payload.items()):
        raise RecipeError(
            f"{where} = {str(path)!r} holds no state dict (names to tensors); save it with "
            "torch.save(model.state_dict(), path)."
        )
    return dict(payload)


def load_weights(model: nn.Module, path: Path, where: str) -> None:
    """Load the weights of ``path`` into ``model`` after checking every key and shape.

    :raises RecipeError: the weights do not fit the model (the model is left unchanged).
    """
    state = read_weights(path, where)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
    if unexpected:
        problems.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
    if shapes:
        problems.append(f"other shapes: {'; '.join(shapes[:3])}")
    if problems:
        raise RecipeError(
            f"{where} = {str(path)!r} does not fit the recipe's {type(model).__name__}: "
            f"{', '.join(problems)}. Give the weights of this architecture with these [model] "
            "arguments (a pruned model's weights need its pruning history; start from the "
            "dense model's)."
        )
    model.load_state_dict(state)
