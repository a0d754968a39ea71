"""Low-rank plus sparse factorization ``W = U V + C`` with the paper's identity offset.

A conv weight is viewed as ``(out, n)`` with ``n = in * kh * kw`` and full rank
``r = min(out, n)``:

- ``out >= n``: ``W = L (R + I) + C`` with ``L: out x n``, ``R: n x n``; initialised as
  ``L = W, R = 0, C = 0``;
- ``out < n``:  ``W = (L + I) R + C`` with ``L: out x out``, ``R: out x n``; initialised as
  ``L = 0, R = W, C = 0``.

The identity part is free: the sparsity budget is charged on ``L``, ``R`` and ``C``, which are
the three parameters (``original0/1/2``) that :mod:`torch.nn.utils.parametrize` creates.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

FACTOR_NAMES = ("original0", "original1", "original2")


class LowRankPlusSparse(nn.Module):
    """Parametrization ``(L, R, C) -> W`` (see the module docstring).

    :param shape: shape of the weight it parametrizes.
    """

    eye: Tensor

    def __init__(self, shape: torch.Size) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.out = int(shape[0])
        self.fan_in = int(torch.Size(shape[1:]).numel())
        self.right_identity = self.out >= self.fan_in
        size = self.fan_in if self.right_identity else self.out
        self.register_buffer("eye", torch.eye(size), persistent=False)

    def forward(self, left: Tensor, right: Tensor, sparse: Tensor) -> Tensor:
        eye = self.eye.to(left.dtype)
        w = left @ (right + eye) if self.right_identity else (left + eye) @ right
        return (w + sparse).reshape(self.shape)

    def right_inverse(self, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        w = weight.detach().reshape(self.out, self.fan_in)
        if self.right_identity:
            left, right = w.clone(), w.new_zeros(self.fan_in, self.fan_in)
        else:
            left, right = w.new_zeros(self.out, self.out), w.clone()
        return left, right, torch.zeros_like(w)


def factorize(module: nn.Module, name: str = "weight") -> list[nn.Parameter]:
    """Replace ``module.<name>`` by a :class:`LowRankPlusSparse` parametrization.

    The module's output is unchanged at initialisation. Returns the three factor parameters.
    """
    weight = getattr(module, name)
    parametrize.register_parametrization(module, name, LowRankPlusSparse(weight.shape), unsafe=True)
    return factor_parameters(module, name)


def factor_parameters(module: nn.Module, name: str = "weight") -> list[nn.Parameter]:
    """The ``[L, R, C]`` parameters of a factorized module."""
    holder = _parametrizations(module)[name]
    return [getattr(holder, n) for n in FACTOR_NAMES]


def is_factorized(module: nn.Module, name: str = "weight") -> bool:
    return parametrize.is_parametrized(module, name) and any(
        isinstance(p, LowRankPlusSparse) for p in _parametrizations(module)[name]
    )


def _parametrizations(module: nn.Module) -> Any:
    return getattr(module, "parametrizations")  # noqa: B009 - typed as Any on purpose


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict of ``model`` with every parametrized tensor evaluated (``W = U V + C``)
    under its plain name and the factor tensors dropped: load it into a fresh, unfactorized
    instance to get the deployed model.

    (Do not ``deepcopy`` a parametrized model and call ``remove_parametrizations`` on the copy:
    the copy shares the generated module class with the original, and removal deletes the
    ``weight`` property from that shared class, breaking the original model.)
    """
    state = {k: v for k, v in model.state_dict().items() if "parametrizations." not in k}
    with torch.no_grad():
        for name, module in model.named_modules():
            if not parametrize.is_parametrized(module):
                continue
            prefix = f"{name}." if name else ""
            for tensor_name in _parametrizations(module):
                state[prefix + tensor_name] = getattr(module, tensor_name).detach().clone()
    return state
