"""Built-in training attacks, backed by torchattacks.

``pgd`` (Madry et al.), ``fgsm``, ``ffgsm`` (fast adversarial training, Wong et al.),
``nfgsm`` (N-FGSM, de Jorge et al., NeurIPS 2022, arXiv 2202.01181; torchattacks has none, so
it is written here) and ``tpgd`` (TRADES-style KL attack). The core's
:class:`~atmc_plugin.adversary.Adversary` wraps whatever this returns with mode, gradient and
input handling.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .config import AttackConfig
from .plugins import hookimpl


@hookimpl
def atmc_attack_names() -> list[str]:
    return list(BUILT_IN)


AttackFn = Callable[[Tensor, Tensor], Tensor]


def _pgd(model: nn.Module, c: AttackConfig) -> AttackFn:
    import torchattacks

    return torchattacks.PGD(
        model,
        eps=c.eps,
        alpha=c.step_size,
        steps=c.steps,
        random_start=c.random_start,
        **c.options,
    )


def _fgsm(model: nn.Module, c: AttackConfig) -> AttackFn:
    import torchattacks

    return torchattacks.FGSM(model, eps=c.eps, **c.options)


def _ffgsm(model: nn.Module, c: AttackConfig) -> AttackFn:
    import torchattacks

    return torchattacks.FFGSM(model, eps=c.eps, alpha=c.step_size, **c.options)


def _nfgsm(model: nn.Module, c: AttackConfig) -> AttackFn:
    return NFGSM(model, eps=c.eps, alpha=c.step_size, noise=c.noise_magnitude)


def _tpgd(model: nn.Module, c: AttackConfig) -> AttackFn:
    import torchattacks

    return torchattacks.TPGD(model, eps=c.eps, alpha=c.step_size, steps=c.steps, **c.options)


BUILT_IN: dict[str, Callable[[nn.Module, AttackConfig], AttackFn]] = {
    "pgd": _pgd,
    "fgsm": _fgsm,
    "ffgsm": _ffgsm,
    "nfgsm": _nfgsm,
    "tpgd": _tpgd,
}
"""The built-in training attacks by name (the names :data:`~atmc_plugin.config.TRAINING_ATTACKS`
validates; a test keeps the two equal)."""


@hookimpl(trylast=True)
def atmc_build_attack(model: nn.Module, config: AttackConfig) -> AttackFn | None:
    build = BUILT_IN.get(config.name)
    return build(model, config) if build is not None else None


class NFGSM:
    """N-FGSM (de Jorge et al., "Make Some Noise", NeurIPS 2022, arXiv 2202.01181).

    ``x_adv = clip_[0,1](x + eta + alpha * sign(grad_x CE(f(x + eta), y)))`` with
    ``eta ~ U(-noise, noise)`` elementwise: one forward-backward pass, like FGSM, and no
    projection of the perturbation back to the eps-ball (the paper's point: the larger noise
    and the unclipped step keep single-step training from overfitting catastrophically). The
    paper's defaults are ``noise = 2 * eps`` and ``alpha = eps``.

    :param model: the classifier (logits), in the mode the caller chose.
    :param eps: the nominal radius (kept for reference; the bound is ``noise + alpha``).
    :param alpha: the signed-gradient step.
    :param noise: the uniform noise's bound, in input units.

    Inputs ``(N, ...)`` in [0, 1] and integer labels ``(N,)``; returns a detached batch.
    """

    def __init__(self, model: nn.Module, *, eps: float, alpha: float, noise: float) -> None:
        self.model, self.eps, self.alpha, self.noise = model, eps, alpha, noise

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        eta = (torch.rand_like(x) * 2 - 1) * self.noise
        start = (x + eta).clamp(0.0, 1.0).requires_grad_(True)
        loss = F.cross_entropy(self.model(start), y)
        (grad,) = torch.autograd.grad(loss, start)
        return (start + self.alpha * grad.sign()).clamp(0.0, 1.0).detach()
