"""The constraint projection: the :class:`Projection` contract and the built-in plugin.

A projection knows two operations that ATMC composes:

- ``sparsity_masks(tensors, budget)``: one global top-``budget`` selection over all tensors;
  ATMC hands it the *ranking* tensors: with ``constraint.allocation`` other than
  ``"magnitude"`` these are the effective weights (each output row scaled by the following
  BatchNorm's ``|gamma| / sqrt(var + eps)``), so the masks may differ from a ranking of the raw
  weights, and the returned threshold is in the projection's own score units;
- ``quantize(tensor, mask)``: project one tensor onto its quantization set, zero outside
  ``mask``, and return the set (``qstate``: a codebook, grid scales ...) so it can be frozen
  for fine-tuning; ``snap(tensor, qstate)`` projects onto a frozen set.

``qstate`` is the projection's own: ATMC stores it, moves its tensors with the model and saves
it in its state dict (tensors, lists, tuples and dicts of them), but only the projection reads
it. To let a frozen set follow structural pruning, a projection may also provide
``select_state(qstate, dim, index) -> qstate`` (keep ``index`` along ``dim`` of the tensor the
set belongs to); without it, pruning after ``finalize()`` is refused. The compact export
(:mod:`atmc_plugin.export`) encodes codes only for :class:`ATMCProjection`'s sets and stores
the values of any other projection's tensors as float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from .config import ConstraintConfig
from .engine.allocation import allocation_scores, guarded_topk_masks
from .engine.codebook import codebook_quantize, snap_to_codebook
from .engine.intgrid import GridSpec, apply_grid, int_grid_quantize
from .errors import InputError
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
    """ATMC's projection: global top-k under the configured allocation (score and per-layer
    guard) and a codebook or integer-grid quantizer.

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
        scores = allocation_scores(tensors, self.config.allocation)
        return guarded_topk_masks(scores, budget, self.config.min_per_layer)

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

    def select_state(self, qstate: Any, dim: int, index: Tensor) -> Any:
        """A codebook or per-tensor grid is unchanged by removing channels; per-channel grid
        scales follow output channels (``dim == 0``).

        :raises InputError: a per-group grid, or a per-channel one sliced along ``dim != 0``.
        """
        grid = self.grid
        if qstate is None or grid is None or grid.granularity == "tensor":
            return qstate
        if grid.granularity != "channel" or dim != 0:
            raise InputError(
                f"cannot slice a frozen {grid.granularity} grid along dim {dim}; remove channels "
                "before atmc.finalize()."
            )
        return [
            (s.index_select(0, index.to(s.device)), z.index_select(0, index.to(z.device)))
            for s, z in qstate
        ]


@hookimpl(trylast=True)
def atmc_build_projection(config: ConstraintConfig) -> Projection:
    """Built-in: ATMC's projection for every constraint config (other plugins may override)."""
    return ATMCProjection(config)
