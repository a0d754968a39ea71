"""ATMC-aware channel importances, usable as ``importance=`` in any Torch-Pruning pruner.

Both score a Torch-Pruning group from a per-parameter *saliency* tensor (same shape as the
parameter): a channel's score is the sum of its saliency over every layer of the group (its
rows in producers, its columns in consumers), normalized by the group mean like Torch-Pruning's
default. They are bound to the wrapped pruner by ``atmc_plugin.wrap``.

- :class:`ADMMProxyImportance`: saliency ``Z**2`` (ATMC's feasible sparse-quantized copy), or
  ``W**2`` of the projected weights without quantization; a channel that ATMC already emptied
  in any conv/linear layer of the group scores exactly 0 and is removed first.
- :class:`RobustTaylorImportance`: first-order Taylor saliency ``|w * dL/dw|`` on the
  adversarial loss, accumulated over a few batches right before each pruning step, BatchNorm
  included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from atmc_plugin import InputError
from atmc_plugin.modes import preserved_modes

if TYPE_CHECKING:
    from .pruner import ATMCPruner

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


class _SaliencyImportance:
    """Group scoring from per-parameter saliency; subclasses define :meth:`saliency`."""

    include_norms = False

    def __init__(self) -> None:
        self.owner: ATMCPruner | None = None

    def bind(self, owner: ATMCPruner) -> None:
        """Attach to the wrapped pruner (done by ``atmc_plugin.wrap``)."""
        self.owner = owner

    def _require_owner(self) -> ATMCPruner:
        if self.owner is None:
            raise InputError(
                f"{type(self).__name__} is not bound: pass the pruner through "
                "atmc_plugin.wrap(pruner, config) before its first step."
            )
        return self.owner

    def saliency(self, module: nn.Module, name: str, param: Tensor) -> Tensor | None:
        raise NotImplementedError

    def prepare(self) -> None:
        """Called by the wrapped pruner right before each pruning step."""

    def follow(self, change: Any) -> None:
        """Called after Torch-Pruning replaced a parameter (a ``slicing.ParamChange``)."""

    def __call__(self, group: Any) -> Tensor | None:
        owner = self._require_owner()
        dg = owner.pruner.DG
        n_root = len(group[0].root_idxs)
        scores: Tensor | None = None
        dead: Tensor | None = None
        for i, (dep, idxs) in enumerate(group):
            module = dep.target.module
            if not isinstance(module, (*_LAYERS, *_NORMS)):
                continue
            if isinstance(module, _NORMS) and not self.include_norms:
                continue
            out = bool(dg.is_out_channel_pruning_fn(dep.handler))
            local = self._local(module, out, idxs)
            if local is None:
                continue
            root = torch.as_tensor(group[i].root_idxs, dtype=torch.long, device=local.device)
            if scores is None:
                scores = torch.zeros(n_root, device=local.device)
                dead = torch.zeros(n_root, dtype=torch.bool, device=local.device)
            scores.index_add_(0, root, local.float())
            if isinstance(module, _LAYERS) and dead is not None:
                dead[root] |= local == 0
                dead_in = self._dead_inputs(owner, module) if not out else None
                if dead_in is not None:
                    index = torch.as_tensor(list(idxs), dtype=torch.long, device=dead_in.device)
                    dead[root] |= dead_in[index].to(dead.device)
        if scores is None or dead is None:
            return None
        scores = scores / scores.mean().clamp(min=1e-12)
        return torch.where(dead, torch.zeros_like(scores), scores)

    @staticmethod
    def _dead_inputs(owner: ATMCPruner, module: nn.Module) -> Tensor | None:
        probe = getattr(owner.regularizer, "dead_inputs", None)
        return probe(module) if callable(probe) else None

    def _local(self, module: nn.Module, out: bool, idxs: Iterable[int]) -> Tensor | None:
        index = torch.as_tensor(list(idxs), dtype=torch.long)
        total: Tensor | None = None
        for pname, param in module.named_parameters(recurse=False):
            sal = self.saliency(module, pname, param)
            if sal is None or (pname == "bias" and not out):
                continue
            sal = sal.detach()
            transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
            if sal.dim() == 1:
                per = sal
            elif out != transposed:
                per = (
                    sal.flatten(1).sum(1)
                    if not transposed
                    else sal.transpose(0, 1).flatten(1).sum(1)
                )
            else:
                mat = sal.transpose(0, 1).flatten(1) if not transposed else sal.flatten(1)
                per = mat.sum(1)
                groups = getattr(module, "groups", 1)
                if isinstance(module, nn.modules.conv._ConvNd) and 1 < groups != module.in_channels:
                    per = per.repeat(groups)
            part = per[index.to(per.device)]
            total = part if total is None else total + part
        return total


class ADMMProxyImportance(_SaliencyImportance):
    """Channel scores from ATMC's ADMM proxy ``Z`` (see the module docstring)."""

    def saliency(self, module: nn.Module, name: str, param: Tensor) -> Tensor | None:
        owner = self._require_owner()
        layer = owner.layer_name(module)
        if layer is None or name != "weight":
            return None
        full = f"{layer}.weight" if layer else "weight"
        z = owner.atmc.proxy(full)
        if z is not None and z.shape == param.shape:
            return z.pow(2)
        return param.detach().pow(2)


class RobustTaylorImportance(_SaliencyImportance):
    """Taylor saliency ``|w * dL/dw|`` on the adversarial loss, BatchNorm included.

    :param batches: callable returning an iterable of ``(x, y)`` batches (for example a
        ``DataLoader`` factory); only the first ``num_batches`` are used before each step.
    :param num_batches: batches to accumulate gradients over.
    :param loss_fn: loss on logits and labels (default cross-entropy).
    """

    include_norms = True

    def __init__(
        self,
        batches: Callable[[], Iterable[tuple[Tensor, Tensor]]],
        num_batches: int = 4,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    ) -> None:
        super().__init__()
        if not callable(batches):
            raise InputError(
                "batches must be a callable returning (x, y) batches, e.g. lambda: loader."
            )
        if num_batches < 1:
            raise InputError(f"num_batches = {num_batches} must be >= 1.")
        self.batches = batches
        self.num_batches = num_batches
        self.loss_fn = loss_fn
        self._saliency: dict[int, Tensor] = {}

    def prepare(self) -> None:
        """Accumulate ``|w * g|`` over adversarial batches (the model's grads stay untouched)."""
        owner = self._require_owner()
        model = owner.model
        params = [p for p in model.parameters() if p.requires_grad]
        acc = [torch.zeros_like(p) for p in params]
        device = params[0].device if params else torch.device("cpu")
        with preserved_modes(model):
            model.eval()
            for i, (x, y) in enumerate(self.batches()):
                if i >= self.num_batches:
                    break
                x, y = x.to(device), y.to(device)
                x_adv = owner.perturb(x, y)
                with torch.enable_grad():
                    loss = self.loss_fn(model(x_adv), y)
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                for a, p, g in zip(acc, params, grads, strict=True):
                    if g is not None:
                        a += (p.detach() * g).abs()
        self._saliency = {id(p): a for p, a in zip(params, acc, strict=True)}

    def follow(self, change: Any) -> None:
        sal = self._saliency.pop(id(change.old), None)
        if sal is None or change.dim is None:
            return
        if change.dim >= 0 and change.keep is not None:
            sal = sal.index_select(change.dim, change.keep.to(sal.device))
        self._saliency[id(change.new)] = sal

    def saliency(self, module: nn.Module, name: str, param: Tensor) -> Tensor | None:
        sal = self._saliency.get(id(param))
        if sal is None or sal.shape != param.shape:
            return None
        return sal
