"""How the layers compete for one global sparsity budget, and how the budget is annealed.

ATMC's constraint keeps one global number ``k`` of non-zeros over every compressed tensor. How
``k`` is split between the tensors is decided by the score each entry is ranked by:

- ``"magnitude"``: ``|w|`` (the paper). Not comparable across layers whose scale is undone by a
  following normalization: at extreme sizes whole layers are starved.
- ``"effective"``: ``|w|`` of the *effective* weight, the raw weight with each output row
  multiplied by the following normalization's ``|gamma| / sqrt(running_var + eps)`` (the
  weight of the conv with BatchNorm folded in). Rows without a following normalization keep
  their raw scale. The caller folds (see :func:`atmc_plugin.layers.norm_scales`); this module
  only ranks.
- ``"lamp"``: the LAMP score of Lee et al. (ICLR 2021) of the effective weight,
  ``w_u^2 / sum_{|w_v| >= |w_u|} w_v^2`` within each tensor. It is invariant to the scale of
  each tensor, so tensors compete on equal terms, and the largest entry of every non-zero
  tensor scores 1, so no tensor is ever emptied.

Independently of the score, a guard keeps the ``min_per_tensor`` best entries of every tensor;
they are counted against ``k``.

The schedule anneals ``k`` from the dense count to the target (Zhu & Gupta, 2017):
``k(t) = k_T + (n - k_T) * (1 - t / T)^3`` for ``t < T`` optimizer steps, ``k_T`` after.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from .sparsity import global_topk_masks

ALLOCATIONS = ("lamp", "effective", "magnitude")
BUDGET_SCHEDULES = ("cubic", "constant")


def lamp_scores(tensor: Tensor) -> Tensor:
    """LAMP score of every entry of ``tensor`` (same shape; zeros score 0, the largest 1)."""
    squared = tensor.detach().reshape(-1).float().pow(2)
    ordered, order = _ascending(squared)
    # suffix sums of the ascending squares: everything at least as large as each entry
    suffix = ordered.flip(0).cumsum(0).flip(0)
    ranked = torch.where(suffix > 0, ordered / suffix.clamp_min(torch.finfo(suffix.dtype).tiny), 0)
    scores = torch.empty_like(ranked)
    scores[order] = ranked
    return scores.reshape(tensor.shape)


def _ascending(values: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.sort(values)``; on CPU through numpy's SIMD argsort, about 3x faster there (the
    projection sorts every compressed tensor at every step)."""
    if values.device.type == "cpu":
        order = torch.from_numpy(np.argsort(values.numpy()))
        return values[order], order
    return torch.sort(values)


def allocation_scores(tensors: Sequence[Tensor], allocation: str) -> list[Tensor]:
    """The non-negative score each entry is ranked by under ``allocation``."""
    if allocation == "lamp":
        return [lamp_scores(t) for t in tensors]
    if allocation in ("magnitude", "effective"):
        return [t.detach().abs() for t in tensors]
    raise InputError(f"allocation = {allocation!r}: choose one of {', '.join(ALLOCATIONS)}.")


def guarded_topk_masks(
    scores: Sequence[Tensor], k: int, min_per_tensor: int = 0
) -> tuple[list[Tensor], float]:
    """Keep the ``k`` best-scored entries over all tensors, at least ``min_per_tensor`` of each.

    The guaranteed entries (the best non-zero ones of each tensor, fewer where a tensor has
    fewer non-zeros) are counted against ``k``; the rest of ``k`` goes to the best remaining
    entries globally. When the guarantees alone exceed ``k``, every tensor gets an equal share
    ``k // len(scores)`` (at least 1) instead.

    :returns: one boolean mask per tensor and the smallest score kept in the global part.
    """
    if k < 1:
        raise InputError(f"sparsity budget k = {k} must be >= 1.")
    if min_per_tensor < 1 or not scores:
        return global_topk_masks(scores, k)
    per = min(min_per_tensor, max(1, k // len(scores)))
    forced = [_top_nonzero(s, per) for s in scores]
    n_forced = sum(int(f.sum()) for f in forced)
    rest = max(0, k - n_forced)
    if rest == 0:
        return forced, 0.0
    # forced entries score 0 in the global part: it fills the rest of the budget
    others = [s.masked_fill(f, 0) for s, f in zip(scores, forced, strict=True)]
    masks, threshold = global_topk_masks(others, rest)
    return [m | f for m, f in zip(masks, forced, strict=True)], threshold


def _top_nonzero(score: Tensor, count: int) -> Tensor:
    flat = score.reshape(-1)
    count = min(count, int(torch.count_nonzero(flat)))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if count > 0:
        mask[torch.topk(flat, count, sorted=False).indices] = True
    return mask.reshape(score.shape)


def scheduled_budget(
    target: int, dense: int, step: int, ramp_steps: int, schedule: str = "cubic"
) -> int:
    """The budget after ``step`` optimizer steps of a ``ramp_steps`` anneal to ``target``."""
    if schedule == "constant" or ramp_steps <= 0 or step >= ramp_steps or target >= dense:
        return target
    if schedule != "cubic":
        raise InputError(f"schedule = {schedule!r}: choose one of {', '.join(BUDGET_SCHEDULES)}.")
    left = 1.0 - max(step, 0) / ramp_steps
    return max(target, round(target + (dense - target) * left**3))
