"""Built-in training attacks, backed by torchattacks.

``pgd`` (Madry et al.), ``fgsm``, ``ffgsm`` (fast adversarial training, Wong et al.) and
``tpgd`` (TRADES-style KL attack). The core's :class:`~atmc_plugin.adversary.Adversary` wraps
whatever this returns with mode, gradient and input handling.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .config import TRAINING_ATTACKS, AttackConfig
from .plugins import hookimpl


@hookimpl
def atmc_attack_names() -> list[str]:
    return list(TRAINING_ATTACKS)


@hookimpl(trylast=True)
def atmc_build_attack(
    model: nn.Module, config: AttackConfig
) -> Callable[[Tensor, Tensor], Tensor] | None:
    import torchattacks

    alpha = config.step_size
    name = config.name
    if name == "pgd":
        attack = torchattacks.PGD(
            model,
            eps=config.eps,
            alpha=alpha,
            steps=config.steps,
            random_start=config.random_start,
            **config.options,
        )
    elif name == "fgsm":
        attack = torchattacks.FGSM(model, eps=config.eps, **config.options)
    elif name == "ffgsm":
        attack = torchattacks.FFGSM(model, eps=config.eps, alpha=alpha, **config.options)
    elif name == "tpgd":
        attack = torchattacks.TPGD(
            model, eps=config.eps, alpha=alpha, steps=config.steps, **config.options
        )
    else:
        return None
    return attack
