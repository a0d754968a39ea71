"""Per-tensor codebook quantization: ``2**bits`` learned non-zero values plus an exact zero.

The projection ``argmin ||Z - W||^2`` with ``Z`` taking values in a codebook that contains a
centre frozen at 0 is one-dimensional k-means. In 1-D the clusters are contiguous runs of the
sorted values, so Lloyd's algorithm runs on sorted data with prefix sums: after one
``O(N log N)`` sort each iteration costs ``O(K log N)`` (a binary search per boundary), and the
final assignment one ``bucketize``. No ``N x K`` distance matrix is ever built.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

MAX_LLOYD_ITERATIONS = 500


def sorted_values(values: Tensor) -> Tensor:
    """Ascending copy of the 1-D ``values`` (numpy's SIMD sort on CPU, ``torch.sort`` elsewhere)."""
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.sort(values.detach().numpy(), kind="quicksort"))
    return torch.sort(values.detach()).values


def quantile_init(sorted_nonzero: Tensor, n_centres: int) -> Tensor:
    """Initial non-zero centres: ``n_centres`` evenly spaced quantiles, duplicates removed."""
    n = sorted_nonzero.numel()
    pos = ((torch.arange(n_centres, dtype=torch.float64) + 0.5) * n / n_centres).long()
    pos = pos.clamp_(0, n - 1).to(sorted_nonzero.device)
    centres = torch.unique(sorted_nonzero[pos].double())
    return centres[centres != 0]


def companding_init(sorted_vals: Tensor, n_centres: int, bins: int = 4096) -> Tensor:
    """Initial non-zero centres near the high-resolution optimum (Panter-Dite).

    For squared error the optimal density of centres is proportional to ``p(x) ** (1/3)``; the
    density ``p`` is estimated by a histogram read off the sorted values with binary searches
    (``O(bins log N)``), and centres are placed at equal steps of the cumulative ``p ** (1/3)``.
    """
    lo, hi = float(sorted_vals[0]), float(sorted_vals[-1])
    if lo == hi:
        return quantile_init(sorted_vals, n_centres)
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    idx = torch.searchsorted(sorted_vals, edges.to(sorted_vals.dtype).to(sorted_vals.device))
    counts = (idx[1:] - idx[:-1]).double().cpu()
    counts[-1] += sorted_vals.numel() - int(idx[-1])
    weight = counts.pow(1.0 / 3.0)
    cdf = torch.cumsum(weight, 0)
    targets = (torch.arange(n_centres, dtype=torch.float64) + 0.5) / n_centres * float(cdf[-1])
    bin_of = torch.searchsorted(cdf, targets).clamp_(max=bins - 1)
    prev = torch.where(bin_of > 0, cdf[(bin_of - 1).clamp(min=0)], torch.zeros_like(targets))
    frac = ((targets - prev) / weight[bin_of].clamp(min=1e-300)).clamp_(0, 1)
    centres = edges[bin_of] + frac * (edges[bin_of + 1] - edges[bin_of])
    centres = torch.unique(centres)
    return centres[centres != 0].to(sorted_vals.device)


def _with_zero(nonzero_centres: Tensor) -> tuple[Tensor, int]:
    """Sorted centres including 0, and the index of the zero centre."""
    c = torch.unique(torch.cat([nonzero_centres.double(), nonzero_centres.new_zeros(1).double()]))
    return c, int(torch.nonzero(c == 0)[0])


def lloyd_sorted(sorted_vals: Tensor, init: Tensor) -> Tensor:
    """Lloyd's algorithm on ascending 1-D data with one centre frozen at 0.

    Runs until the assignment stops changing (or :data:`MAX_LLOYD_ITERATIONS`). Ties at a
    midpoint go to the lower centre, as ``argmin`` over a distance matrix would.

    :param sorted_vals: ascending values (any device).
    :param init: initial non-zero centres.
    :returns: the sorted centres, zero included (float64).
    """
    centres, zero_at = _with_zero(init.to(sorted_vals.device))
    data = sorted_vals
    prefix = torch.cat(
        [data.new_zeros(1, dtype=torch.float64), torch.cumsum(data, 0, dtype=torch.float64)]
    )
    edges: Tensor | None = None
    n = data.numel()
    for _ in range(MAX_LLOYD_ITERATIONS):
        # Midpoints in the data's dtype, exactly as snap_to_codebook computes them.
        c = centres.to(data.dtype)
        mids = (c[1:] + c[:-1]) / 2
        new_edges = torch.searchsorted(data, mids, right=True)
        if edges is not None and torch.equal(new_edges, edges):
            break
        edges = new_edges
        bounds = torch.cat([new_edges.new_zeros(1), new_edges, new_edges.new_full((1,), n)])
        counts = bounds[1:] - bounds[:-1]
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
        updated[zero_at] = 0.0
        if bool((counts == 0).any()):
            # An empty cluster keeps its old centre, which may break the ordering: re-sort.
            centres, zero_at = _with_zero(updated[updated != 0])
        else:
            # Means of ordered contiguous runs stay ordered; only a centre hitting 0 merges.
            centres = updated
            if int(torch.count_nonzero(centres == 0)) > 1:
                centres, zero_at = _with_zero(centres[centres != 0])
    return centres


def snap_to_codebook(values: Tensor, centres: Tensor) -> Tensor:
    """Replace each entry by its nearest centre (ascending ``centres``; ties go to the lower)."""
    c = centres.to(device=values.device, dtype=values.dtype)
    if c.numel() == 1:
        return c.expand_as(values).clone()
    mids = (c[1:] + c[:-1]) / 2
    idx = torch.bucketize(values, mids, right=False)
    return c[idx]


def codebook_quantize(
    values: Tensor,
    bits: int,
    *,
    mask: Tensor | None = None,
    init: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Project ``values`` onto the best codebook of ``2**bits`` non-zero values plus zero.

    Entries where ``mask`` is False become exactly 0; exact zeros stay zero. If the masked
    values have at most ``2**bits`` distinct non-zero values they are returned unchanged.

    :param values: any-shape float tensor.
    :param bits: codebook size exponent (``2**bits`` non-zero centres).
    :param mask: optional boolean support; outside it the result is 0.
    :param init: optional initial non-zero centres (default: :func:`companding_init`).
    :returns: ``(projected, centres)`` - the projection (same shape, dtype, device) and the sorted
        centres including 0.
    """
    flat = values.detach().reshape(-1)
    support = flat != 0 if mask is None else (mask.reshape(-1) & (flat != 0))
    everything = int(torch.count_nonzero(support)) == flat.numel()
    chosen = flat if everything else flat[support]
    out = torch.zeros_like(flat)
    if chosen.numel() == 0:
        return out.reshape(values.shape), flat.new_zeros(1, dtype=torch.float64)
    data = sorted_values(chosen).to(flat.device)
    n_centres = 2**bits
    distinct = 1 + int((data[1:] != data[:-1]).sum()) if data.numel() > 1 else 1
    if distinct <= n_centres and init is None:
        centres, _ = _with_zero(torch.unique_consecutive(data).double())
        out = chosen.clone() if everything else out.index_put_((support,), chosen)
        return out.reshape(values.shape), centres
    start = companding_init(data, n_centres) if init is None else init.reshape(-1).double()
    centres = lloyd_sorted(data, start)
    snapped = snap_to_codebook(chosen, centres)
    out = snapped if everything else out.index_put_((support,), snapped)
    return out.reshape(values.shape), centres
