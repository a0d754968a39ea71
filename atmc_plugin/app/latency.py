"""Latency as deployed: eager and ``torch.compile``d forward passes.

An INC int8 graph in eager mode runs reference quantize/dequantize ops and is slower than
fp32; compiled by inductor with ``freezing`` it runs oneDNN int8 kernels. The run report shows
the compiled figure when compilation works here, and says so when it does not (no C++
compiler, an unsupported op), never the eager int8 figure as if it were deployment speed.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..modes import preserved_modes
from ..serving import REPEATS, deployment_compile, median_call_seconds

log = logging.getLogger(__name__)


def median_seconds(model: nn.Module, batch: Tensor, repeats: int = REPEATS) -> float:
    """Median seconds per forward pass (eval, no grad) after 3 warm-up passes; the model's
    modes are restored after."""
    plain = getattr(model, "_orig_mod", model)  # a torch.compile wrapper: its module
    with preserved_modes(plain):
        if not isinstance(plain, torch.fx.GraphModule):  # exported graphs refuse .eval()
            plain.eval()
        return median_call_seconds(model, batch, repeats)


def compiled_seconds(model: nn.Module, batch: Tensor) -> float:
    """Median seconds of ``torch.compile(model)`` with inductor ``freezing`` (compilation runs
    in the warm-up passes and is not timed)."""
    with deployment_compile(), torch.no_grad():
        compiled = cast(nn.Module, torch.compile(model))
        return median_seconds(compiled, batch)


def measure(models: dict[str, nn.Module], batch: Tensor, compiled: bool) -> dict[str, Any]:
    """``{"eager": {name: ms}, "compiled": {name: ms} | None, "compile_error": str | None}``."""
    out: dict[str, Any] = {
        "eager": {name: 1e3 * median_seconds(m, batch) for name, m in models.items()},
        "compiled": None,
        "compile_error": None,
    }
    if not compiled:
        return out
    try:
        out["compiled"] = {name: 1e3 * compiled_seconds(m, batch) for name, m in models.items()}
    except Exception as exc:  # inductor fails in many ways (no compiler, unsupported op)
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        out["compile_error"] = f"{type(exc).__name__}: {first}"
        log.warning("torch.compile failed, latency is eager only: %s", out["compile_error"])
    return out
