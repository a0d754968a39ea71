"""Relaxed group sparsity (RGSM, Dinh et al., arXiv 2003.00631) for channel pruning.

For each selected conv/linear layer the groups are its input channels (``W[:, c]``). The
training objective gains a group-lasso term and a relaxed group-l0 split with no dual variable:

    f(W) + lambda1 * sum_g ||W_g||  +  beta / 2 * ||W - U||^2,
    U = argmin lambda2 * ||U||_{G,0} + beta / 2 * ||W - U||^2   (group hard threshold of W:
        a group survives when beta / 2 * ||W_g||^2 > lambda2).

:meth:`RGSM.regularize` adds the gradient of the two extra terms to ``.grad`` after the user's
``backward()`` (Torch-Pruning's ``regularize`` convention) and refreshes ``U``. An input channel
whose relaxed copy ``U_g`` is zero (see :meth:`RGSM.dead_inputs`) scores 0 in the ATMC-aware
importances, so the next pruning step removes exactly the channels RGSM emptied.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from atmc_plugin import ConfigError
from atmc_plugin.layers import layer_weight

_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


class RGSM:
    """Relaxed group-sparsity regularizer over input channels.

    :param lambda1: group-lasso weight (>= 0).
    :param lambda2: group-l0 weight (>= 0).
    :param beta: relaxation weight (> 0).
    :param layer_filter: optional ``filter(module, name) -> bool``; default every ungrouped
        conv/linear layer.
    """

    def __init__(
        self,
        lambda1: float = 1e-4,
        lambda2: float = 1e-3,
        beta: float = 1.0,
        layer_filter: Callable[[nn.Module, str], bool] | None = None,
    ) -> None:
        if lambda1 < 0 or lambda2 < 0:
            raise ConfigError(f"RGSM lambda1 = {lambda1}, lambda2 = {lambda2}: both must be >= 0.")
        if beta <= 0:
            raise ConfigError(f"RGSM beta = {beta} must be > 0.")
        self.lambda1 = float(lambda1)
        self.lambda2 = float(lambda2)
        self.beta = float(beta)
        self.layer_filter = layer_filter

    def _layers(self, model: nn.Module) -> list[nn.Module]:
        chosen: list[nn.Module] = []
        for name, m in model.named_modules():
            if not isinstance(m, _LAYERS) or getattr(m, "groups", 1) != 1:
                continue
            if self.layer_filter is None or self.layer_filter(m, name):
                chosen.append(m)
        return chosen

    @staticmethod
    def _column_norms(weight: torch.Tensor) -> torch.Tensor:
        """``||W[:, c]||`` per input channel, as shape ``(1, in, 1, ...)`` for broadcasting."""
        dims = [d for d in range(weight.dim()) if d != 1]
        return weight.pow(2).sum(dim=dims, keepdim=True).sqrt()

    def regularize(self, model: nn.Module) -> None:
        """Add the group-lasso and relaxation gradients to each layer's ``weight.grad``."""
        with torch.no_grad():
            for m in self._layers(model):
                w = layer_weight(m)
                if w.grad is None:
                    continue
                norms = self._column_norms(w)
                lasso = w / norms.clamp(min=1e-12) * (norms > 0)
                keep = (0.5 * self.beta * norms.pow(2)) > self.lambda2
                u = w * keep
                w.grad.add_(self.lambda1 * lasso + self.beta * (w - u))

    def dead_inputs(self, module: nn.Module) -> torch.Tensor | None:
        """Input channels of ``module`` whose relaxed copy ``U_g`` is zero (the group is out).

        ``None`` for layers RGSM does not regularize.
        """
        if not isinstance(module, _LAYERS) or getattr(module, "groups", 1) != 1:
            return None
        norms = self._column_norms(layer_weight(module).detach()).reshape(-1)
        return (0.5 * self.beta * norms.pow(2)) <= self.lambda2

    def update(self) -> None:
        """Nothing to refresh: ``U`` is recomputed from ``W`` at every call (no dual variable)."""

    def empty_channels(self, model: nn.Module) -> dict[nn.Module, int]:
        """Input channels per layer whose group is currently all zero."""
        return {
            m: int((self._column_norms(layer_weight(m)).reshape(-1) == 0).sum())
            for m in self._layers(model)
        }
