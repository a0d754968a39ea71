"""Following Torch-Pruning's channel removal: which indices each parameter kept.

Torch-Pruning replaces every parameter it slices. For each group we snapshot every parameter
of the model (so that parameters held directly by a module, such as a class token, position
embedding or layer scale that Torch-Pruning slices through ``unwrapped_parameters``, are seen
too), let ``group.prune()`` run, and work out per replaced parameter the dimension that shrank
and the indices kept along it, from the group's items: (module, out/in, removed indices) for
layers, (parameter, removed indices) for unwrapped parameters. The user's optimizer state and
ATMC's state are then sliced with those indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class ParamChange:
    """One parameter replaced by Torch-Pruning."""

    name: str
    old: nn.Parameter
    new: nn.Parameter
    dim: int | None  # None: the change could not be traced; state must be reset
    keep: Tensor | None


def _expected_dim(module: nn.Module, param_name: str, param: Tensor, out: bool) -> int:
    if param.dim() == 1:
        return 0
    if isinstance(module, nn.Embedding):  # (num_embeddings, embedding_dim): out is dim 1
        return 1 if out else 0
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    if param_name == "weight" and isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        return (1 if out else 0) if transposed else (0 if out else 1)
    return 0 if out else 1


def _keep(
    old_size: int, new_size: int, removed: list[int], module: nn.Module, out: bool
) -> Tensor | None:
    """Kept indices along a dimension, or None when they cannot be derived."""
    removed_set = sorted({int(i) for i in removed})
    if removed_set and removed_set[-1] < old_size and old_size - len(removed_set) == new_size:
        kept = sorted(set(range(old_size)) - set(removed_set))
        return torch.tensor(kept, dtype=torch.long)
    groups = getattr(module, "groups", 1)
    if not out and groups > 1 and isinstance(module, nn.modules.conv._ConvNd):
        # Grouped conv: dim 1 holds in_channels / groups positions shared by every group.
        local = sorted({i % old_size for i in removed_set})
        if old_size - len(local) == new_size:
            return torch.tensor(sorted(set(range(old_size)) - set(local)), dtype=torch.long)
    return None


def snapshot(model: nn.Module) -> dict[str, tuple[nn.Module, str, nn.Parameter]]:
    """Every parameter of ``model``: qualified name -> (owning module, attribute, parameter)."""
    out = {}
    for prefix, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            full = f"{prefix}.{pname}" if prefix else pname
            out[full] = (module, pname, p)
    return out


def changes(
    before: dict[str, tuple[nn.Module, str, nn.Parameter]],
    removed: dict[nn.Module, dict[bool, list[int]]],
    removed_params: dict[int, list[int]] | None = None,
) -> list[ParamChange]:
    """Compare parameters after ``group.prune()`` with the snapshot ``before``.

    :param removed: per pruned module, the removed indices of its out (True) / in channels.
    :param removed_params: per parameter Torch-Pruning sliced directly (``id`` of the old
        parameter), the removed indices.
    """
    result = []
    for full, (module, pname, old) in before.items():
        new = getattr(module, pname, None)
        if not isinstance(new, nn.Parameter) or new is old:
            continue
        dims = [d for d in range(old.dim()) if old.shape[d] != new.shape[d]]
        if not dims:
            result.append(ParamChange(full, old, new, dim=-1, keep=None))  # same shape, new object
            continue
        dim, keep = None, None
        if len(dims) == 1:
            d = dims[0]
            direct = (removed_params or {}).get(id(old))
            candidates = [(True, direct)] if direct is not None else removed.get(module, {}).items()
            for out, idxs in candidates:
                if (
                    direct is not None
                    or _expected_dim(module, pname, old, out) == d
                    or (old.dim() == 1)
                ):
                    keep = _keep(old.shape[d], new.shape[d], idxs, module, out)
                    if keep is not None:
                        dim = d
                        break
        result.append(ParamChange(full, old, new, dim=dim, keep=keep))
    return result


def slice_optimizer(optimizer: torch.optim.Optimizer, change: ParamChange) -> None:
    """Point the optimizer at the new parameter and slice its state (momentum, moments)."""
    for group in optimizer.param_groups:
        group["params"] = [change.new if p is change.old else p for p in group["params"]]
    state = optimizer.state.pop(change.old, None)
    if not state:
        return
    if change.dim is None:
        return  # untraceable change: start this parameter's state afresh
    new_state = {}
    for key, value in state.items():
        if (
            isinstance(value, Tensor)
            and value.shape == change.old.shape
            and change.dim >= 0
            and change.keep is not None
        ):
            value = value.index_select(change.dim, change.keep.to(value.device)).contiguous()
        new_state[key] = value
    optimizer.state[change.new] = new_state
