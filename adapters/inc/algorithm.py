"""The ``"atmc"`` algorithm entry registered in INC's algorithm registry.

- ``PREPARE``: build an :class:`INCSession` (ATMC on the ops INC assigned to ``"atmc"``). Its
  projections run after each step of the optimizer that trains the model: the one given to
  :meth:`INCSession.attach`, or else the first one found stepping (a torch global step hook that
  only watches for it, then hands over to a hook on that optimizer), so the user's training
  function only adds ``session.perturb(x, y)`` and ``session.penalty()``;
- ``QUANTIZE``: prepare, run the user's ``run_fn(model)`` with gradients enabled (INC's
  ``run_fn`` is a calibration hook; here it is adversarial ADMM fine-tuning), then convert;
- ``CONVERT``: hard projection onto exactly INC's integer grid, then INC's own conversion
  (weight-only RTN for ``backend="rtn"``); the largest difference between ATMC's projected
  weights and INC's dequantized weights is recorded in :func:`conversion_report`.

The session is an attribute of the prepared model (:data:`SESSION_ATTR`), as INC keeps its own
``quantizer`` and ``quant_config``: it lives and dies with the model, and ``copy.deepcopy`` of a
prepared model (``convert(..., inplace=False)``) carries a copy of it. There is no
process-global store.
"""

from __future__ import annotations

import copy
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from neural_compressor.common.utils import Mode
from neural_compressor.torch.utils import register_algo
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from atmc_plugin import ATMC, ConfigError, InputError
from atmc_plugin.report import CompressionReport, tensor_stats

from .config import ALGO_NAME, ATMCQuantConfig, atmc_ops

logger = logging.getLogger(__name__)

SESSION_ATTR = "atmc_session"
"""Name of the attribute of a prepared model that holds its :class:`INCSession`."""


@dataclass
class ConversionReport:
    """What ``convert`` did: ATMC's compression and how much INC's conversion moved weights."""

    compression: CompressionReport
    backend: str
    max_weight_diff: dict[str, float] = field(default_factory=dict)

    @property
    def worst_weight_diff(self) -> float:
        return max(self.max_weight_diff.values(), default=0.0)


class INCSession:
    """ATMC for one model being quantized by INC.

    :param model: the model INC is preparing.
    :param op_names: ops INC assigned to ``"atmc"``.
    :param config: their (shared) :class:`ATMCQuantConfig`.
    """

    def __init__(self, model: nn.Module, op_names: list[str], config: ATMCQuantConfig) -> None:
        self.model = model
        self.config = config
        self.left_fp32 = _unpacked_by_backend(model, op_names, config.backend)
        self.op_names = [n for n in op_names if n not in self.left_fp32]
        if not self.op_names:
            raise ConfigError(
                f"atmc backend = {config.backend!r} packs nn.Linear layers only and INC assigned "
                f"atmc to {self.left_fp32[:3]} (no Linear): nothing would ship compressed. Use "
                'backend = "pt2e" (static int8 of convolutions too) or "none".'
            )
        if self.left_fp32:
            logger.info(
                "INC weight-only RTN packs nn.Linear only: ATMC leaves %s in fp32 (not on the "
                "%d-bit grid, not in the sparsity budget); the report counts them at 32 bits",
                self.left_fp32,
                config.bits,
            )
        self.atmc = ATMC(model, config.to_atmc(self.op_names), total_steps=config.total_steps)
        self._hook: Any = None
        self.report: ConversionReport | None = None

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        """Adversarial batch for training (see :meth:`atmc_plugin.ATMC.perturb`)."""
        return self.atmc.perturb(x, y)

    def penalty(self) -> Tensor:
        """ADMM term to add to the training loss."""
        return self.atmc.penalty()

    def set_total_steps(self, total_steps: int | None) -> None:
        """Say how many optimizer steps ``run_fn`` takes: the length the budget anneals over."""
        self.atmc.set_total_steps(total_steps)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Run ATMC's schedule after each step of ``optimizer`` (and of no other)."""
        self.deactivate()
        self.atmc.attach(optimizer)

    def activate(self) -> None:
        """Find the optimizer that trains the model at its first step, then follow only it.

        Until then a torch global step hook watches every optimizer's step; it removes itself
        at the first match, at :meth:`deactivate`, and when the session is collected.
        """
        if self._hook is not None or self.atmc.optimizer is not None:
            return
        ref = weakref.ref(self)

        def after_step(optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
            session = ref()
            if session is None or not session._trains(optimizer):
                return
            session.attach(optimizer)
            session.atmc.after_optimizer_step()  # the step that found it

        self._hook = register_optimizer_step_post_hook(after_step)
        weakref.finalize(self, self._hook.remove)

    def deactivate(self) -> None:
        """Stop following any optimizer."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.atmc.detach()

    def _trains(self, optimizer: torch.optim.Optimizer) -> bool:
        ours = {id(p) for p in self.atmc.parameters().values()}
        return any(id(p) in ours for g in optimizer.param_groups for p in g["params"])

    def __deepcopy__(self, memo: dict[int, Any]) -> INCSession:
        """A copy for a copy of the prepared model: same state, following no optimizer."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            setattr(new, key, None if key == "_hook" else copy.deepcopy(value, memo))
        return new


def _unpacked_by_backend(model: nn.Module, op_names: list[str], backend: str) -> list[str]:
    """The ops ``backend`` would leave in fp32: everything but ``nn.Linear`` for RTN."""
    if backend != "rtn":
        return []
    modules = dict(model.named_modules())
    return [n for n in op_names if not isinstance(modules.get(n), nn.Linear)]


def session_of(model: nn.Module) -> INCSession:
    """The ATMC session of a model prepared with :class:`ATMCQuantConfig`.

    :raises InputError: the model was not prepared with ATMC.
    """
    session = getattr(model, SESSION_ATTR, None)
    if not isinstance(session, INCSession):
        raise InputError(
            "this model has no ATMC session: prepare it with "
            "neural_compressor.torch.quantization.prepare(model, ATMCQuantConfig(...)) or call "
            "quantize(model, ATMCQuantConfig(...), run_fn=train) and use the model it passes "
            "to run_fn."
        )
    return session


def conversion_report(model: nn.Module) -> ConversionReport:
    """The :class:`ConversionReport` of a model converted by the ``"atmc"`` algorithm."""
    report = session_of(model).report
    if report is None:
        raise InputError("the model was prepared with ATMC but not converted yet.")
    return report


@register_algo(ALGO_NAME)
def atmc_entry(
    model: nn.Module,
    configs_mapping: Any,
    mode: Mode = Mode.QUANTIZE,
    *args: Any,
    **kwargs: Any,
) -> nn.Module:
    """INC entry of the ``"atmc"`` algorithm (see the module docstring)."""
    op_names, config = atmc_ops(configs_mapping)
    if mode in (Mode.PREPARE, Mode.QUANTIZE):
        session = INCSession(model, op_names, config)
        setattr(model, SESSION_ATTR, session)
        session.activate()
        if mode == Mode.PREPARE:
            return model
    session = session_of(model)
    if mode == Mode.QUANTIZE:
        run_fn = kwargs.get("run_fn")
        if run_fn is None:
            session.deactivate()
            raise ConfigError(
                "quantize(..., ATMCQuantConfig(...)) needs run_fn: your training function "
                "run_fn(model), using atmc_plugin_adapters.inc.session_of(model).perturb(x, y) "
                "and .penalty() in its loss."
            )
        run_args = kwargs.get("run_args") or ()
        try:
            with torch.enable_grad():
                run_fn(model, *run_args)
        finally:
            session.deactivate()
    return _convert(model, session)


def _convert(model: nn.Module, session: INCSession) -> nn.Module:
    session.deactivate()
    compression = _shipped(model, session, session.atmc.finalize())
    projected = {n: p.detach().clone() for n, p in session.atmc.parameters().items()}
    backend = session.config.backend
    report = ConversionReport(compression=compression, backend=backend)
    if backend == "rtn":
        model = _rtn(model, session, projected, report)
    session.report = report
    session.model = model
    setattr(model, SESSION_ATTR, session)
    return model


def _shipped(
    model: nn.Module, session: INCSession, compression: CompressionReport
) -> CompressionReport:
    """ATMC's report plus the ops the backend leaves in fp32, counted at 32 bits as shipped."""
    if not session.left_fp32:
        return compression
    modules = dict(model.named_modules())
    left = [tensor_stats(f"{n}.weight", modules[n].weight, None) for n in session.left_fp32]
    return CompressionReport(
        tensors=[*compression.tensors, *left],
        dense_numel=compression.dense_numel + sum(t.numel for t in left),
        budget=compression.budget,
        extra=dict(compression.extra),
    )


def _rtn(
    model: nn.Module, session: INCSession, projected: dict[str, Tensor], report: ConversionReport
) -> nn.Module:
    """Hand the Linear ops to INC's weight-only RTN with exactly ATMC's grid."""
    from neural_compressor.torch.quantization import RTNConfig, quantize

    cfg = session.config
    modules = dict(model.named_modules())
    linears = list(session.op_names)  # the session keeps only what RTN packs
    rtn = RTNConfig(dtype="fp32", use_layer_wise=False)
    for name in linears:
        rtn.set_local(
            name,
            RTNConfig(
                bits=cfg.bits, use_sym=cfg.use_sym, group_size=cfg.group_size, use_layer_wise=False
            ),
        )
    model = quantize(model, rtn)
    modules = dict(model.named_modules())
    for name in linears:
        recovered = modules[name].recover().float()
        ours = projected[f"{name}.weight"].to(recovered.device)
        report.max_weight_diff[name] = float((recovered - ours).abs().max())
    return model
