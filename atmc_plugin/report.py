"""Compression report: non-zeros, distinct values, bits and size ratio per tensor and in total.

The size ratio follows the paper: compressed bits (``nnz * bits`` of every compressed tensor)
over the dense 32-bit bits of the compressed conv/linear weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class TensorStats:
    """Figures of one compressed tensor."""

    name: str
    numel: int
    nnz: int
    distinct: int
    bits: int

    @property
    def compressed_bits(self) -> int:
        return self.nnz * self.bits


@dataclass(frozen=True)
class CompressionReport:
    """Per-tensor figures and totals against ``dense_numel`` 32-bit weights."""

    tensors: list[TensorStats]
    dense_numel: int
    budget: int | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def nnz(self) -> int:
        return sum(t.nnz for t in self.tensors)

    @property
    def compressed_bits(self) -> int:
        return sum(t.compressed_bits for t in self.tensors)

    @property
    def size_ratio(self) -> float:
        return self.compressed_bits / (32 * self.dense_numel) if self.dense_numel else 0.0

    @property
    def density(self) -> float:
        return self.nnz / self.dense_numel if self.dense_numel else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "tensors": [asdict(t) for t in self.tensors],
            "dense_numel": self.dense_numel,
            "budget": self.budget,
            "nnz": self.nnz,
            "density": self.density,
            "compressed_bits": self.compressed_bits,
            "size_ratio": self.size_ratio,
            **self.extra,
        }

    def __str__(self) -> str:
        width = max([len("tensor"), *(len(t.name) for t in self.tensors)])
        lines = [f"{'tensor':<{width}}  {'numel':>10}  {'nnz':>10}  {'distinct':>8}  {'bits':>4}"]
        for t in self.tensors:
            lines.append(
                f"{t.name:<{width}}  {t.numel:>10}  {t.nnz:>10}  {t.distinct:>8}  {t.bits:>4}"
            )
        lines.append(
            f"total: nnz {self.nnz} of {self.dense_numel} dense weights (density "
            f"{self.density:.4g}), size ratio {self.size_ratio:.4g}"
        )
        return "\n".join(lines)


def tensor_stats(name: str, tensor: Tensor, bits: int | None) -> TensorStats:
    """Count non-zeros and distinct non-zero values of ``tensor``."""
    flat = tensor.detach().reshape(-1)
    nonzero = flat[flat != 0]
    distinct = int(torch.unique(nonzero).numel()) if nonzero.numel() else 0
    return TensorStats(
        name=name,
        numel=flat.numel(),
        nnz=int(nonzero.numel()),
        distinct=distinct,
        bits=32 if bits is None else bits,
    )


def build_report(
    tensors: Mapping[str, Tensor], bits: int | None, dense_numel: int, budget: int | None
) -> CompressionReport:
    return CompressionReport(
        tensors=[tensor_stats(n, t, bits) for n, t in tensors.items()],
        dense_numel=dense_numel,
        budget=budget,
    )
