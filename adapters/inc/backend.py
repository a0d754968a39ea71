"""The ``[inc.atmc]`` and ``[inc.static]`` recipe sections as backends of the ``atmc`` command.

- ``[inc.atmc]``: INC's dict form of :class:`ATMCQuantConfig`; compression runs through INC's
  ``prepare`` (ATMC on INC's integer grid) and ends with INC's ``convert``.
- ``[inc.static]``: INC's dict form of ``StaticQuantConfig``; the trained model is shipped as
  INC's static int8 graph (PT2E), calibrated with adversarial batches.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from atmc_plugin import ATMC, ATMCError, ConfigError
from atmc_plugin.artifacts import Artifact
from atmc_plugin.backend import BackendContext, MakeOptimizer, SessionBackend

from .algorithm import session_of
from .config import ATMCQuantConfig


def _error(section: str, exc: Exception) -> ConfigError:
    return ConfigError(f"[{section}] {exc}")


class ATMCQuantBackend(SessionBackend):
    """ATMC through INC's ``prepare``/``convert`` with :class:`ATMCQuantConfig`.

    :raises ConfigError: settings INC or ATMC refuse, or ``backend = "rtn"``, whose weight-only
        modules the fine-tuning stage cannot train and a final checkpoint cannot rebuild.
    """

    section = "inc.atmc"

    def __init__(self, settings: Mapping[str, Any], context: BackendContext) -> None:
        constraint = context.atmc.constraint
        if constraint.sparse or constraint.quantized:
            raise ConfigError(
                f"[{self.section}] and [atmc.constraint] both set the constraint; with "
                f"[{self.section}] leave [atmc.constraint] out ([atmc.attack] still sets the "
                "pre-training attack)."
            )
        try:
            config = ATMCQuantConfig.from_dict(dict(settings))
            config.validate()
        except (TypeError, ValueError, KeyError) as exc:  # ConfigError is a ValueError
            raise _error(self.section, exc) from exc
        if config.backend == "rtn":
            default = "" if "backend" in settings else " (the default)"
            raise ConfigError(
                f"[{self.section}] backend = 'rtn'{default}: INC's RTN replaces the Linear "
                "layers with weight-only modules, which the fine-tuning stage cannot train and "
                "final.pt cannot rebuild. Set backend = "
                "'pt2e' (ATMC on INC's int8 grid, add [inc.static] to ship int8) or backend = "
                "'none'; for RTN, call quantize(model, ATMCQuantConfig(backend='rtn'), "
                "run_fn=...) from Python."
            )
        self.config = config
        self.context = context

    def check(self, model: nn.Module) -> None:
        """Its attack (maybe a plugin's) and budget, on this model."""
        ops = [name for name, _type in self.config.get_model_info(model)]
        try:
            ATMC(copy.deepcopy(model), self.config.to_atmc(ops))
        except ATMCError as exc:
            raise _error(self.section, exc) from exc

    def prepare(
        self, model: nn.Module, make_optimizer: MakeOptimizer
    ) -> tuple[nn.Module, ATMC, torch.optim.Optimizer]:
        from neural_compressor.torch.quantization import prepare

        model = prepare(model, self.config)
        session = session_of(model)
        optimizer = make_optimizer(model)
        session.attach(optimizer)
        self.atmc = session.atmc
        return model, session.atmc, optimizer

    def finalize(self, model: nn.Module) -> nn.Module:
        from neural_compressor.torch.quantization import convert

        return convert(model)

    def rebuild(self, model: nn.Module, state: dict[str, Any]) -> None:
        """Nothing: the ``pt2e`` and ``none`` backends keep the model's structure."""


class _SavesInINCFormat:
    """``atmc export --format inc``: INC's own save format (see :mod:`.saving`)."""

    native_format = "inc"

    def save_native(
        self,
        shipped: nn.Module,
        model: nn.Module,
        example: Tensor,
        folder: Path,
        batches: Sequence[int],
    ) -> Artifact:
        from .saving import save_inc

        return save_inc(shipped, model, example, folder, batches=batches)


class StaticInt8Backend(_SavesInINCFormat):
    """Ships the trained model as INC's static int8 graph (the model is left unchanged)."""

    section = "inc.static"

    def __init__(self, settings: Mapping[str, Any], context: BackendContext) -> None:
        from .pt2e import static_config_from_dict

        try:
            self.config = static_config_from_dict(dict(settings))
        except (TypeError, ValueError, KeyError) as exc:
            raise _error(self.section, exc) from exc
        self.context = context

    def check(self, model: nn.Module) -> None:
        """Nothing beyond the settings, checked when the backend is built."""

    def ship(self, model: nn.Module, calibration: Iterable[tuple[Tensor, Tensor]]) -> nn.Module:
        from .pt2e import quantize_static_int8

        device = next(model.parameters()).device
        return quantize_static_int8(
            model,
            self.context.example.to(device),
            calibration,
            attack=self.context.atmc.attack,
            config=self.config,
            seed=self.context.seed,
        )


class WeightOnlyBackend(_SavesInINCFormat):
    """Ships the trained model with INC's weight-only RTN (``RTNConfig`` dict form: bits,
    group_size, use_sym ...) on its Linear layers; the model itself is left unchanged. Train for
    the same grid (``[atmc.constraint]`` bits, ``quantizer = "int"``, the group size) so that
    RTN keeps ATMC's weights."""

    section = "inc.rtn"

    def __init__(self, settings: Mapping[str, Any], context: BackendContext) -> None:
        import inspect

        from neural_compressor.torch.quantization import RTNConfig

        from atmc_plugin.errors import did_you_mean

        known = [n for n in inspect.signature(RTNConfig).parameters if n != "white_list"]
        for key in settings:  # INC's from_dict ignores unknown keys
            if key not in known:
                raise ConfigError(
                    f"[{self.section}] has no setting {key!r}.{did_you_mean(key, known)} "
                    f"RTNConfig takes: {', '.join(known)}."
                )
        bits, group = settings.get("bits", 4), settings.get("group_size", 32)
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ConfigError(f"[{self.section}] bits = {bits!r}: expected an integer in [1, 8].")
        if isinstance(group, bool) or not isinstance(group, int) or not (group == -1 or group > 0):
            raise ConfigError(
                f"[{self.section}] group_size = {group!r}: expected -1 (per channel) or a "
                "positive integer."
            )
        if not isinstance(settings.get("use_sym", True), bool):
            raise ConfigError(f"[{self.section}] use_sym must be true or false.")
        self.config = RTNConfig.from_dict(dict(settings))
        self.config.use_layer_wise = False
        self.context = context

    def check(self, model: nn.Module) -> None:
        if not any(isinstance(m, nn.Linear) for m in model.modules()):
            raise ConfigError(
                f"[{self.section}] {type(model).__name__} has no Linear layer: INC's weight-only "
                "RTN quantizes Linear layers only; use [inc.static] for convolutions."
            )

    def ship(self, model: nn.Module, calibration: Iterable[tuple[Tensor, Tensor]]) -> nn.Module:
        from neural_compressor.torch.quantization import quantize

        shipped = quantize(copy.deepcopy(model).eval(), self.config)
        return shipped.eval()
