"""Example third-party plugin: momentum iterative FGSM (Dong et al., CVPR 2018) as an attack.

Install it (``pip install examples/plugins/atmc-mifgsm``) and use it from any ATMC config::

    [atmc.attack]
    name = "mifgsm"
    eps = 0.1
    steps = 7
    options = { decay = 1.0 }

The core takes care of modes, gradients and clipping; this module only computes the attack.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import atmc_plugin


@atmc_plugin.hookimpl
def atmc_attack_names() -> list[str]:
    return ["mifgsm"]


@atmc_plugin.hookimpl
def atmc_build_attack(
    model: nn.Module, config: atmc_plugin.AttackConfig
) -> Callable[[Tensor, Tensor], Tensor] | None:
    if config.name != "mifgsm":
        return None
    decay = float(config.options.get("decay", 1.0))
    eps, alpha, steps = config.eps, config.step_size, config.steps

    def attack(x: Tensor, y: Tensor) -> Tensor:
        momentum = torch.zeros_like(x)
        adv = x.clone()
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model(adv), y)
            (grad,) = torch.autograd.grad(loss, adv)
            norm = grad.abs().mean(dim=tuple(range(1, grad.dim())), keepdim=True)
            momentum = decay * momentum + grad / norm.clamp(min=1e-12)
            adv = adv.detach() + alpha * momentum.sign()
            adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0.0, 1.0)
        return adv.detach()

    return attack
