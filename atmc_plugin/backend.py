"""The contract between the ``atmc`` command and a tool's adapter: backends.

The command (``atmc_plugin.app``) has no per-tool code. For each tool section of a recipe
(``[torch_pruning]``, ``[inc.atmc]``, ``[inc.static]``, ``[inc.rtn]``) it asks the plugins for
a backend through the ``atmc_command_backend`` hook, gives it plain values
(:class:`BackendContext`, the section as a dict) and drives it:

- a :class:`CompressionBackend` runs the compress and finetune stages (one per recipe; without
  a tool section the command uses plain :class:`~atmc_plugin.ATMC`);
- a :class:`ShipBackend` turns the trained model into the one that is deployed (INC's int8).

Adapters implement these protocols with their tool's public API; a third tool is a plugin
that does the same, with no change to the command or the library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .artifacts import Artifact
from .config import ATMCConfig
from .core import ATMC
from .errors import InternalError
from .report import CompressionReport

MakeOptimizer = Callable[[nn.Module], torch.optim.Optimizer]
"""Builds the stage's optimizer for the parameters of the model it is given."""


@dataclass(frozen=True)
class BackendContext:
    """What the command tells a backend about the run.

    :param source: where the settings come from (the recipe file), for error messages.
    :param atmc: the recipe's ``[atmc]`` configuration.
    :param example: an input batch on the training device (for tracing).
    :param seed: the recipe's seed (calibration and other random choices).
    :param plugin_manager: the run's plugin manager (attacks, projections); ``None``: the
        process's default.
    """

    source: str
    atmc: ATMCConfig
    example: Tensor
    seed: int
    plugin_manager: Any = None


@runtime_checkable
class CompressionBackend(Protocol):
    """A tool's compress/finetune stages as the command drives them.

    Errors in the settings raise :class:`~atmc_plugin.ConfigError` naming the key and the fix
    (the command adds the file name); :meth:`check` raises them before any training.
    """

    section: str
    """The recipe section it serves, e.g. ``"torch_pruning"`` (for messages)."""

    def check(self, model: nn.Module) -> None:
        """Build everything on ``model`` (a throwaway copy) so that bad settings fail now."""

    def prepare(
        self, model: nn.Module, make_optimizer: MakeOptimizer
    ) -> tuple[nn.Module, ATMC, torch.optim.Optimizer]:
        """Start compression: the model to train (maybe a new object), its :class:`ATMC`, and
        the optimizer (from ``make_optimizer``) whose steps run the projections."""

    def on_epoch(self, epoch: int, epochs: int) -> None:
        """Before compress epoch ``epoch`` of ``epochs`` (and once with ``epoch == epochs``
        after the last): structural changes that are due."""

    def before_step(self, model: nn.Module, loss: Tensor) -> None:
        """After ``loss.backward()``, before the optimizer's step of a compress epoch."""

    def finalize(self, model: nn.Module) -> nn.Module:
        """Hard projection at the end of compression; returns the model to fine-tune."""

    def report(self) -> tuple[CompressionReport, dict[str, Any]]:
        """The element-wise compression report and the whole report as a plain dict."""

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and containers (loadable with ``weights_only=True``)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` after :meth:`prepare` on a fresh model."""

    def rebuild(self, model: nn.Module, state: dict[str, Any]) -> None:
        """Give a freshly built dense ``model`` the structure that ``state`` was saved with
        (pruned widths, factorization), so the final weights load into it."""


class SessionBackend:
    """The common part of a :class:`CompressionBackend` whose state is one :class:`ATMC`
    session and which changes no structure: subclasses set :attr:`atmc` in ``prepare`` and
    provide ``section``, ``check``, ``prepare``, ``finalize`` and ``rebuild``."""

    atmc: ATMC | None = None

    def session(self) -> ATMC:
        """The prepared session.

        :raises ATMCError: :meth:`prepare` has not run.
        """
        if self.atmc is None:
            raise InternalError(f"the {type(self).__name__} was not prepared.")
        return self.atmc

    def on_epoch(self, epoch: int, epochs: int) -> None:
        """Nothing: no structural change during training."""

    def before_step(self, model: nn.Module, loss: Tensor) -> None:
        """Nothing: the projections run from the optimizer's step."""

    def report(self) -> tuple[CompressionReport, dict[str, Any]]:
        report = self.session().report()
        return report, report.to_dict()

    def state_dict(self) -> dict[str, Any]:
        return self.session().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.session().load_state_dict(state)


@runtime_checkable
class ShipBackend(Protocol):
    """Turns the trained model into the deployed one (e.g. INC's static int8)."""

    section: str

    def check(self, model: nn.Module) -> None:
        """Fail now on bad settings."""

    def ship(self, model: nn.Module, calibration: Iterable[tuple[Tensor, Tensor]]) -> nn.Module:
        """The deployed model; ``model`` itself is left unchanged."""


@runtime_checkable
class NativeFormatBackend(Protocol):
    """A :class:`ShipBackend` that also saves what it shipped in its tool's own format
    (``atmc export --format NAME``), checked by reloading it with the tool."""

    native_format: str
    """The format's name on the command line, e.g. ``"inc"``."""

    def save_native(
        self,
        shipped: nn.Module,
        model: nn.Module,
        example: Tensor,
        folder: Path,
        batches: Sequence[int],
    ) -> Artifact:
        """Write ``shipped`` (made from ``model``) into ``folder`` and check it."""
