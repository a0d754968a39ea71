"""What structural pruning plus ATMC achieved, against the dense model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from atmc_plugin.report import CompressionReport

from .measure import count_macs, out_channels

if TYPE_CHECKING:
    from .pruner import ATMCPruner


@dataclass(frozen=True)
class PruningReport:
    """Channels, parameters and MACs (structural) plus nnz, bits and size ratio (elementwise).

    ``size_ratio`` is compressed bits of the conv/linear weights over their dense 32-bit bits,
    where "dense" is the model before any pruning, so it counts both kinds of compression.
    """

    channels: dict[str, tuple[int, int]]  # layer -> (dense out channels, now)
    ignored: tuple[str, ...]  # layers Torch-Pruning was told to leave alone
    dense_params: int
    params: int
    dense_macs: int | None
    macs: int | None
    elementwise: CompressionReport

    @property
    def size_ratio(self) -> float:
        return self.elementwise.size_ratio

    @property
    def channel_ratio(self) -> float:
        """Fraction of output channels removed over the prunable compressed layers."""
        kept = [v for k, v in self.channels.items() if k not in self.ignored]
        dense = sum(d for d, _ in kept)
        now = sum(n for _, n in kept)
        return 1 - now / dense if dense else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": {k: list(v) for k, v in self.channels.items()},
            "channel_ratio": self.channel_ratio,
            "ignored": list(self.ignored),
            "dense_params": self.dense_params,
            "params": self.params,
            "dense_macs": self.dense_macs,
            "macs": self.macs,
            "size_ratio": self.size_ratio,
            "elementwise": self.elementwise.to_dict(),
        }

    def __str__(self) -> str:
        lines = [f"{'layer':<24} {'channels':>16}"]
        for name, (dense, now) in self.channels.items():
            note = "  (ignored)" if name in self.ignored else ""
            lines.append(f"{name:<24} {f'{dense} -> {now}':>16}{note}")
        lines.append(
            f"params {self.dense_params} -> {self.params} "
            f"({self.params / self.dense_params:.3f} of dense)"
        )
        if self.macs is not None and self.dense_macs:
            share = self.macs / self.dense_macs
            lines.append(f"MACs {self.dense_macs} -> {self.macs} ({share:.3f} of dense)")
        lines.append(str(self.elementwise))
        return "\n".join(lines)


def build_pruning_report(pruner: ATMCPruner) -> PruningReport:
    channels = {
        name: (pruner.dense_channels.get(name, out_channels(m)), out_channels(m))
        for m, name in pruner.layer_names.items()
    }
    ignored = tuple(n for m, n in pruner.layer_names.items() if m in pruner.pruner.ignored_layers)
    return PruningReport(
        channels=channels,
        ignored=ignored,
        dense_params=pruner.dense_params,
        params=sum(p.numel() for p in pruner.model.parameters()),
        dense_macs=pruner.dense_macs,
        macs=count_macs(pruner.model, pruner.example_inputs),
        elementwise=pruner.atmc.report(),
    )
