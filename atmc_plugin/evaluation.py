"""Quick accuracy checks. Not an honest robustness evaluation (no restarts, no APGD/Square)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .adversary import Adversary
from .config import AttackConfig
from .modes import preserved_modes
from .plugins import default_plugin_manager


def quick_robust_accuracy(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int = 20
) -> tuple[float, float]:
    """Clean and PGD-``steps`` accuracy (one random start, step ``eps / 4``), in eval mode.

    The model's modes are restored afterwards.
    """
    attack = Adversary(
        model,
        AttackConfig(name="pgd", eps=eps, steps=steps, alpha=eps / 4),
        default_plugin_manager(),
    )
    with preserved_modes(model), torch.no_grad():
        model.eval()
        clean = (model(x).argmax(1) == y).float().mean().item()
        robust = (model(attack(x, y)).argmax(1) == y).float().mean().item()
    return clean, robust
