"""Global l0 projection: keep the ``k`` largest magnitudes across many tensors at once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError


def kth_largest(values: Tensor, k: int) -> Tensor:
    """Return the ``k``-th largest entry of the 1-D tensor ``values`` (1-based ``k``).

    Uses numpy's SIMD introselect on CPU float32 (faster than ``torch.kthvalue`` there) and
    ``torch.kthvalue`` elsewhere.
    """
    n = values.numel()
    if not 1 <= k <= n:
        raise InputError(f"k = {k} must lie in 1..{n}.")
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        arr = values.numpy()
        return torch.as_tensor(np.partition(arr, n - k)[n - k])
    return torch.kthvalue(values, n - k + 1).values


def global_topk_masks(tensors: Sequence[Tensor], k: int) -> tuple[list[Tensor], float]:
    """Boolean masks keeping the ``k`` largest ``|value|`` over all ``tensors`` together.

    There are no per-tensor quotas. Ties at the threshold are broken deterministically by
    position (tensor order, then flat index), so every process given the same tensors returns
    the same masks. When fewer than ``k`` entries are non-zero, every non-zero entry is kept.

    :returns: one mask per tensor (same shape and device) and the threshold (smallest kept
        magnitude).
    """
    if k < 1:
        raise InputError(f"sparsity budget k = {k} must be >= 1.")
    if not tensors:
        return [], 0.0
    device = tensors[0].device
    mags = torch.cat([t.detach().reshape(-1).abs().to(device) for t in tensors])
    total = mags.numel()
    if k >= total:
        return [torch.ones_like(t, dtype=torch.bool) for t in tensors], 0.0
    threshold = kth_largest(mags, k).to(device)
    keep = mags > threshold
    n_above = int(torch.count_nonzero(keep))
    ties = mags == threshold
    n_ties = int(torch.count_nonzero(ties))
    need = k - n_above
    if need >= n_ties:
        keep |= ties
    elif need > 0:
        keep |= ties & (torch.cumsum(ties, 0, dtype=torch.int64) <= need)
    masks = []
    offset = 0
    for t in tensors:
        n = t.numel()
        masks.append(keep[offset : offset + n].reshape(t.shape).to(t.device))
        offset += n
    return masks, float(threshold)
