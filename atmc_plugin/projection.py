"""The constraint projection: the :class:`Projection` contract and the built-in plugin.

A projection knows two operations that ATMC composes:

- ``sparsity_masks(tensors, budget)``: one global top-``budget`` selection over all tensors;
- ``quantize(name, tensor, mask)``: project one tensor onto its quantization set, zero outside
  ``mask``, and return the set (codebook or grid) so it can be frozen for fine-tuning;
  ``snap(tensor, qstate)`` projects onto a frozen set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from .config import ConstraintConfig
from .engine.codebook import codebook_quantize, snap_to_codebook
from .engine.intgrid import GridSpec, apply_grid, int_grid_quantize
from .engine.sparsity import global_topk_masks
from .plugins import hookimpl


@runtime_checkable
class Projection(Protocol):
    """What a constraint projection plugin must provide."""

    def sparsity_masks(self, tensors: Sequence[Tensor], budget: int) -> tuple[list[Tensor], float]:
        """Masks keeping at most ``budget`` entries over all ``tensors``, and the threshold."""
        ...

    def quantize(self, tensor: Tensor, mask: Tensor | None) -> tuple[Tensor, Any]:
        """Project ``tensor`` onto its quantization set (0 outside ``mask``); return the set."""
        ...

    def snap(self, tensor: Tensor, qstate: Any) -> Tensor:
        """Project ``tensor`` onto the frozen quantization set ``qstate``."""
        ...


class ATMCProjection:
    """ATMC's projection: global magnitude top-k and a codebook or integer-grid quantizer.

    :param config: the constraint configuration (``bits`` must be set to quantize).
    """

    def __init__(self, config: ConstraintConfig) -> None:
        self.config = config
        self.grid = (
            GridSpec(
                bits=config.bits,
                symmetric=config.symmetric,
                granularity=config.granularity,
                group_size=config.group_size,
                scale_rule=config.scale_rule,
            )
            if config.bits is not None and config.quantizer == "int"
            else None
        )

    def sparsity_masks(self, tensors: Sequence[Tensor], budget: int) -> tuple[list[Tensor], float]:
        return global_topk_masks(tensors, budget)

    def quantize(self, tensor: Tensor, mask: Tensor | None) -> tuple[Tensor, Any]:
        bits = self.config.bits
        if bits is None:
            return (tensor if mask is None else tensor * mask), None
        if self.grid is None:
            return codebook_quantize(tensor, bits, mask=mask)
        source = tensor if mask is None else tensor * mask
        return int_grid_quantize(source, self.grid)

    def snap(self, tensor: Tensor, qstate: Any) -> Tensor:
        if qstate is None:
            return tensor
        if self.grid is None:
            return snap_to_codebook(tensor, qstate)
        return apply_grid(tensor, self.grid, qstate)


@hookimpl(trylast=True)
def atmc_build_projection(config: ConstraintConfig) -> Projection:
    """Built-in: ATMC's projection for every constraint config (other plugins may override)."""
    return ATMCProjection(config)
