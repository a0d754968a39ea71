"""Running attacks safely on a user's model.

:class:`Adversary` turns any plugin attack into a well-behaved training component:

- inputs are validated (float32, finite, in [0, 1] pixel space, integer labels);
- with ``mean``/``std`` configured, batches are normalized tensors; the attack works in pixel
  space on a normalizing view of the model and the result is normalized again;
- the attack runs in eval mode (no BatchNorm statistics are touched) and every module's
  ``training`` flag is restored afterwards, so a BatchNorm the user froze stays frozen;
- parameters do not receive gradients (their ``requires_grad`` is lowered during the attack);
- it works inside ``torch.no_grad()`` and on the model's current device;
- the result is projected into the attack's ball (eps; N-FGSM's ``noise * eps + alpha``, see
  :attr:`~atmc_plugin.AttackConfig.radius`) and [0, 1], whatever the plugin returned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .config import AttackConfig
from .errors import InputError, PluginError, did_you_mean
from .modes import preserved_modes

AttackFn = Callable[[Tensor, Tensor], Tensor]
_RANGE_TOLERANCE = 1e-5


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel``, else ``model``."""
    inner = getattr(model, "module", None)
    if (
        isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel))
        and inner is not None
    ):
        return inner
    return model


def model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


class _Normalized(nn.Module):
    """``model((x - mean) / std)``: lets pixel-space attacks drive a normalized-input model."""

    mean: Tensor
    std: Tensor

    def __init__(self, model: nn.Module, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model((x - self.mean) / self.std)
        return out


class Adversary:
    """Callable ``adversary(x, y) -> x_adv`` built from the installed attack plugins.

    :param model: the model to attack (DDP wrappers are looked through).
    :param config: the attack configuration.
    :param plugin_manager: where to look the attack up.
    """

    def __init__(self, model: nn.Module, config: AttackConfig, plugin_manager: Any) -> None:
        self.model = unwrap_model(model)
        self.config = config
        self._pm = plugin_manager
        self._attack: AttackFn | None = None
        self._device: torch.device | None = None
        self._target: nn.Module = self.model
        self._build()

    def _stats(self, device: torch.device) -> tuple[Tensor, Tensor] | None:
        if self.config.mean is None or self.config.std is None:
            return None
        shape = (1, len(self.config.mean), 1, 1)
        mean = torch.tensor(self.config.mean, device=device).reshape(shape)
        std = torch.tensor(self.config.std, device=device).reshape(shape)
        return mean, std

    def _build(self) -> None:
        device = model_device(self.model)
        stats = self._stats(device)
        self._target = self.model if stats is None else _Normalized(self.model, *stats)
        attack = self._pm.hook.atmc_build_attack(model=self._target, config=self.config)
        if attack is None:
            names = sorted({n for names in self._pm.hook.atmc_attack_names() for n in names})
            raise PluginError(
                f"attack.name = {self.config.name!r}: no installed plugin provides this attack."
                f"{did_you_mean(self.config.name, names)} Installed training attacks: "
                f"{', '.join(names)}. Third-party attacks register through the 'atmc_plugin' "
                "entry-point group (see docs/hooks.md)."
            )
        self._attack = attack
        self._device = device

    def _check(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise InputError("perturb(x, y) needs tensors for both the batch and its labels.")
        if x.dtype != torch.float32:
            raise InputError(
                f"inputs have dtype {x.dtype}; attacks need float32. Convert with x.float()."
            )
        if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise InputError(
                f"labels have dtype {y.dtype}; they must be integer class indices "
                "(convert with y.long(), or argmax one-hot labels)."
            )
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise InputError(
                f"labels of shape {tuple(y.shape)} do not match a batch of {x.shape[0]}; "
                "give one class index per example."
            )
        if not bool(torch.isfinite(x).all()):
            raise InputError("inputs contain NaN or inf; clean the batch before attacking it.")
        return x, y.long()

    def to_pixels(self, x: Tensor) -> Tensor:
        stats = self._stats(x.device)
        return x if stats is None else x * stats[1] + stats[0]

    def from_pixels(self, x: Tensor) -> Tensor:
        stats = self._stats(x.device)
        return x if stats is None else (x - stats[0]) / stats[1]

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        x, y = self._check(x, y)
        device = model_device(self.model)
        if device != self._device:
            self._build()
        pixels = self.to_pixels(x.detach().to(device))
        lo, hi = float(pixels.min()), float(pixels.max())
        if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
            hint = (
                " If the batch is normalized, set attack.mean and attack.std."
                if self.config.mean is None
                else " Check attack.mean and attack.std against the data's normalization."
            )
            raise InputError(
                f"inputs span [{lo:.4g}, {hi:.4g}] in pixel space; attacks need values in [0, 1]."
                + hint
            )
        pixels = pixels.clamp(0.0, 1.0)
        adv = self._run(pixels, y.to(device))
        return self.from_pixels(adv).to(x.device)

    def _run(self, pixels: Tensor, y: Tensor) -> Tensor:
        attack = self._attack
        if attack is None:  # _build() either sets it or raises
            raise PluginError(f"attack {self.config.name!r} was not built.")
        grads = [(p, p.requires_grad) for p in self._target.parameters()]
        with preserved_modes(self._target):
            try:
                self._target.eval()
                for p, _ in grads:
                    p.requires_grad_(False)
                with torch.enable_grad():
                    adv = attack(pixels, y)
            finally:
                for p, flag in grads:
                    p.requires_grad_(flag)
        if not isinstance(adv, Tensor) or adv.shape != pixels.shape:
            raise PluginError(
                f"attack {self.config.name!r} returned {type(adv).__name__} "
                f"{getattr(adv, 'shape', '')}; expected a tensor of shape {tuple(pixels.shape)}."
            )
        radius = self.config.radius  # eps, or N-FGSM's larger bound
        adv = torch.max(torch.min(adv.detach(), pixels + radius), pixels - radius)
        return adv.clamp_(0.0, 1.0)
