"""``[train] precision``: mixed-precision training steps, and the GPU-throughput settings.

- ``"fp32"``: plain steps.
- ``"bf16"``: the forward passes (clean and adversarial) and the attack's own passes run under
  ``torch.autocast`` in bfloat16 (CPU and CUDA). Weights, gradients, the optimizer, ATMC's
  projections, ADMM state and codebooks stay fp32: the projections run from the optimizer's
  step, outside autocast, and the ADMM penalty is added outside it.
- ``"fp16"``: float16 autocast with a gradient scaler (``torch.amp.GradScaler``); the
  gradients are unscaled before the compression tool's regularizer reads them, and a step the
  scaler skips (inf/NaN gradients) does not advance ATMC's schedule.

On CUDA, CNN models train in ``channels_last`` memory format and the DataLoader pins its
batches (see :func:`cuda_throughput`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """One training step's precision handling.

    ::

        with precision.autocast():
            loss = ...                     # forwards and the attack
        precision.backward(loss)           # scaled for fp16
        precision.unscale(optimizer)       # before anything reads the gradients
        precision.step(optimizer)          # scaler.step + update for fp16

    :param name: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
    :param device: the training device.
    """

    def __init__(self, name: str, device: torch.device) -> None:
        self.name = name
        self.device = device
        self.dtype = DTYPES.get(name)
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring fp16 gradients back to their true scale, once per step (no-op otherwise;
        :meth:`step` then does not unscale them again)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def cuda_throughput(model: nn.Module, device: torch.device) -> bool:
    """On CUDA, put a model with 2-d convolutions in ``channels_last`` (faster cuDNN kernels
    under autocast); returns whether inputs should be converted too."""
    if device.type != "cuda" or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return True
