"""Uniform integer-grid projection with Intel Neural Compressor's scale conventions.

Weights are viewed as ``(out, fan_in)`` (dim 0 = output channels). One scale (and zero point)
is computed per tensor, per output channel, or per group of ``group_size`` consecutive input
elements of a row (a shorter last group holds the remainder, as INC's RTN does).

Scale rules:

- ``"rtn"`` - INC weight-only round-to-nearest. Symmetric: ``scale = amax / (2**(b-1) - 1)``,
  codes in ``[-2**(b-1), 2**(b-1) - 1]``. Asymmetric: ``[min(w, 0), max(w, 0)]`` mapped to
  ``[0, 2**b - 1]`` with an integer zero point.
- ``"pt2e"`` - PyTorch min/max observers used by INC static int8. Symmetric:
  ``scale = amax / ((2**b - 1) / 2)``; asymmetric: ``(max - min) / (2**b - 1)``; scales are
  clamped below by float32 epsilon.

An exact zero always maps to an exact zero, so sparsity survives quantization.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GridSpec:
    """Parameters of an integer grid (see the module docstring)."""

    bits: int
    symmetric: bool = True
    granularity: str = "tensor"
    group_size: int | None = None
    scale_rule: str = "rtn"

    @property
    def code_range(self) -> tuple[int, int]:
        if self.symmetric:
            return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        return 0, 2**self.bits - 1


def _blocks(w: Tensor, spec: GridSpec) -> tuple[list[Tensor], int]:
    """Row blocks of ``w`` whose rows each share one scale, and the column split point."""
    if spec.granularity == "tensor":
        return [w.reshape(1, -1)], 0
    mat = w.reshape(w.shape[0], -1)
    size = spec.group_size or mat.shape[1]
    if spec.granularity == "channel" or size >= mat.shape[1]:
        return [mat], 0
    split = mat.shape[1] // size * size
    blocks = [mat[:, :split].reshape(-1, size)]
    if split < mat.shape[1]:
        blocks.append(mat[:, split:])
    return blocks, split


def _scale_and_zero(rows: Tensor, spec: GridSpec) -> tuple[Tensor, Tensor]:
    qmin, qmax = spec.code_range
    wmax = rows.max(dim=1).values
    wmin = rows.min(dim=1).values
    if spec.symmetric:
        amax = torch.maximum(wmax.abs(), wmin.abs())
        if spec.scale_rule == "rtn":
            amax = torch.where(amax == 0, torch.ones_like(amax), amax)
            scale = amax / qmax
        else:
            scale = (amax / ((qmax - qmin) / 2)).clamp(min=torch.finfo(torch.float32).eps)
        return scale, torch.zeros_like(scale)
    lo = torch.minimum(wmin, torch.zeros_like(wmin))
    hi = torch.maximum(wmax, torch.zeros_like(wmax))
    if spec.scale_rule == "rtn":
        both_zero = (lo == 0) & (hi == 0)
        lo = torch.where(both_zero, -torch.ones_like(lo), lo)
        hi = torch.where(both_zero, torch.ones_like(hi), hi)
        scale = (hi - lo) / qmax
        zero = torch.round(-lo / scale)
    else:
        scale = ((hi - lo) / (qmax - qmin)).clamp(min=torch.finfo(torch.float32).eps)
        zero = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    return scale, zero


def int_grid_quantize(w: Tensor, spec: GridSpec) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """Quantize-dequantize ``w`` onto its integer grid.

    :returns: the projected tensor (same shape, dtype, device) and, per row block, the
        ``(scale, zero_point)`` vectors used (for export and for a frozen grid).
    """
    blocks, _ = _blocks(w.detach(), spec)
    params = [_scale_and_zero(b, spec) for b in blocks]
    return apply_grid(w, spec, params), params


def apply_grid(w: Tensor, spec: GridSpec, params: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Snap ``w`` onto a grid with the given (possibly frozen) per-block scales and zero points."""
    qmin, qmax = spec.code_range
    blocks, split = _blocks(w.detach(), spec)
    if len(blocks) != len(params):
        raise ValueError(f"expected {len(blocks)} scale blocks, got {len(params)}")
    recip = spec.scale_rule == "pt2e"
    snapped = [
        snap_to_grid(b, s, z, qmin, qmax, reciprocal=recip)
        for b, (s, z) in zip(blocks, params, strict=True)
    ]
    if spec.granularity == "group" and split:
        rows = w.shape[0]
        parts = [snapped[0].reshape(rows, split), *snapped[1:]]
        return torch.cat(parts, dim=1).reshape(w.shape)
    return snapped[0].reshape(w.shape)


def snap_to_grid(
    rows: Tensor, scale: Tensor, zero: Tensor, qmin: int, qmax: int, *, reciprocal: bool = False
) -> Tensor:
    """``(clamp(round(rows / scale) + zero, qmin, qmax) - zero) * scale``, one scale per row.

    ``reciprocal=True`` multiplies by ``1 / scale`` instead of dividing, as PyTorch's
    fake-quantize kernels do; the two differ on exact halves, so each rule uses its tool's form.
    """
    s = scale.unsqueeze(1)
    z = zero.unsqueeze(1)
    scaled = rows * (1.0 / s) if reciprocal else rows / s
    return (torch.clamp(torch.round(scaled) + z, qmin, qmax) - z) * s


def element_grid(
    shape: torch.Size | tuple[int, ...], spec: GridSpec, params: list[tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor]:
    """Per-element scale and zero point (flattened) of a tensor of ``shape`` on a grid.

    Codes and values then convert elementwise with exactly :func:`snap_to_grid`'s arithmetic.
    """
    numel = math.prod(shape)
    positions = torch.arange(numel, dtype=torch.float64).reshape(shape)
    blocks, _ = _blocks(positions, spec)
    if len(blocks) != len(params):
        raise ValueError(f"expected {len(blocks)} scale blocks, got {len(params)}")
    scale = torch.empty(numel, dtype=params[0][0].dtype)
    zero = torch.empty(numel, dtype=params[0][1].dtype)
    for block, (s, z) in zip(blocks, params, strict=True):
        index = block.long()
        scale[index.reshape(-1)] = s.cpu().unsqueeze(1).expand_as(index).reshape(-1)
        zero[index.reshape(-1)] = z.cpu().unsqueeze(1).expand_as(index).reshape(-1)
    return scale, zero


def grid_codes(values: Tensor, scale: Tensor, zero: Tensor, spec: GridSpec) -> Tensor:
    """Integer codes of values already on the grid (elementwise scale / zero point)."""
    scaled = values * (1.0 / scale) if spec.scale_rule == "pt2e" else values / scale
    return torch.round(scaled) + zero


def grid_values(codes: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    """Values of integer ``codes``: ``(code - zero) * scale`` (as :func:`snap_to_grid`)."""
    return (codes - zero) * scale
