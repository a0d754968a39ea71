"""Honest robustness evaluation: strong gradient attacks, a gradient-free one, sanity checks.

:func:`evaluate` returns clean accuracy, robust accuracy per attack and the worst case per
sample (a point counts as robust only if every attack fails on it). By default every attack
runs on every point, so each attack's own accuracy is reported too; with ``cascade=True`` each
attack runs only on the points still robust, as AutoAttack does: the same worst case, at a
fraction of the cost on models that are not robust. Presets:

- ``quick``: PGD-20 (step eps/8, random start) with 2 restarts;
- ``standard``: PGD-20 with 5 restarts, then the AutoAttack ensemble with the reference step
  counts (torchattacks' own ``AutoAttack`` uses 10): APGD-CE (100 steps), APGD with the DLR
  loss and 5 restarts (100 steps each; a scale-invariant loss that catches what cross-entropy
  misses on quantized models), APGD-T (100 steps, 9 target classes), FAB-T (100 steps) and
  Square (5000 queries). Run as a cascade (the ``atmc`` command's default), the restarts cost
  little: they only meet the points every earlier attack missed.

Evaluation never changes the global RNG stream, the model's modes or its weights. Models that
are not differentiable (INC int8 graphs) are attacked through the copy a plugin provides via
``atmc_attackable_model``. Warnings explain likely gradient masking, in the spirit of
auto-attack's flags: see ``docs/robustness.md``.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .adversary import model_device
from .errors import ConfigError, InputError
from .modes import preserved_modes
from .plugins import default_plugin_manager

PRESETS = ("quick", "standard")
DOC = "docs/robustness.md"


class RobustnessWarning(UserWarning):
    """A robustness number that should not be trusted as it is (see ``docs/robustness.md``)."""


@dataclass(frozen=True)
class RobustnessReport:
    """Clean and robust accuracy of one evaluation.

    :param per_attack: accuracy under each attack alone (on all points).
    :param robust: worst case per sample over all attacks.
    :param cascade: attacks ran in sequence on the points still robust; ``per_attack`` then
        holds the robust accuracy after each attack and those before it.
    """

    eps: float
    preset: str
    n: int
    clean: float
    per_attack: dict[str, float]
    robust: float
    flags: list[str] = field(default_factory=list)
    cascade: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "preset": self.preset,
            "n": self.n,
            "clean": self.clean,
            "per_attack": dict(self.per_attack),
            "robust": self.robust,
            "flags": list(self.flags),
            "cascade": self.cascade,
        }

    def __str__(self) -> str:
        parts = [f"clean {self.clean:.4f}"]
        parts += [f"{k} {v:.4f}" for k, v in self.per_attack.items()]
        parts.append(f"worst case {self.robust:.4f}")
        return f"eps {self.eps:g} ({self.preset}, n={self.n}): " + ", ".join(parts)


def _attacks(model: nn.Module, eps: float, preset: str, n_classes: int) -> list[tuple[str, Any]]:
    import torchattacks

    def pgd(restarts: int) -> Callable[[Tensor, Tensor], Tensor]:
        attack = torchattacks.PGD(model, eps=eps, alpha=eps / 8, steps=20, random_start=True)

        def run(x: Tensor, y: Tensor) -> Tensor:
            best = x.clone()
            todo = torch.ones(len(y), dtype=torch.bool, device=x.device)
            for _ in range(restarts):
                if not bool(todo.any()):
                    break
                adv = attack(x[todo], y[todo])
                with torch.no_grad():
                    fooled = model(adv).argmax(1) != y[todo]
                idx = todo.nonzero().flatten()
                best[idx[fooled]] = adv[fooled]
                todo[idx[fooled]] = False
            return best

        return run

    if preset == "quick":
        return [("pgd20x2", pgd(2))]
    targets = max(1, n_classes - 1)
    dlr = (  # the difference-of-logits-ratio loss needs three classes
        [
            (
                "apgd-dlr",
                torchattacks.APGD(model, eps=eps, steps=100, loss="dlr", n_restarts=5, seed=0),
            )
        ]
        if n_classes >= 3
        else []
    )
    return [
        ("pgd20x5", pgd(5)),
        ("apgd-ce", torchattacks.APGD(model, eps=eps, steps=100, loss="ce", seed=0)),
        *dlr,
        ("apgd-t", torchattacks.APGDT(model, eps=eps, steps=100, n_classes=targets + 1, seed=0)),
        (
            "fab-t",
            torchattacks.FAB(
                model, eps=eps, steps=100, multi_targeted=True, n_classes=targets + 1, seed=0
            ),
        ),
        ("square", torchattacks.Square(model, eps=eps, n_queries=5000, seed=0)),
    ]


def _batches(data: Any, batch_size: int) -> Iterable[tuple[Tensor, Tensor]]:
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        x, y = data
        if len(x) != len(y):
            raise InputError(f"{len(x)} inputs but {len(y)} labels.")
        for start in range(0, len(y), batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
        return
    yield from data


def _count_batches(data: Any, batch_size: int) -> int | None:
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        return -(-len(data[0]) // batch_size)
    try:
        return len(data)
    except TypeError:
        return None


def _check_batch(batch: Any, offset: int) -> tuple[Tensor, Tensor]:
    """A batch as float inputs in [0, 1] and 1-D integer labels >= 0, or a clear error."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise InputError(f"batch at sample {offset}: expected (inputs, labels), got {type(batch)}.")
    x, y = batch
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise InputError(f"batch at sample {offset}: inputs and labels must be tensors.")
    where = f"batch at sample {offset}"
    if not x.is_floating_point():
        raise InputError(f"{where}: inputs must be floating point in [0, 1], got {x.dtype}.")
    if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise InputError(
            f"{where}: labels must be a 1-D tensor of class indices (integers), got dtype "
            f"{y.dtype} and shape {tuple(y.shape)}."
        )
    if len(x) != len(y) or len(y) == 0:
        raise InputError(f"{where}: {len(x)} inputs but {len(y)} labels.")
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{where}: inputs contain NaN or inf.")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise InputError(
            f"{where}: inputs must lie in [0, 1] (got {float(x.min()):.3g}..{float(x.max()):.3g}); "
            "give pixels, and put normalization inside the model."
        )
    if int(y.min()) < 0:
        raise InputError(f"{where}: labels must be >= 0, got {int(y.min())}.")
    return x.float(), y.long()


@dataclass(frozen=True)
class EvalProgress:
    """Where :func:`evaluate` is, handed to its ``on_progress`` after each attack on a batch.

    :param attack: the attack that just ran on the batch.
    :param attack_index: its position (1-based) among ``attacks``.
    :param attacks: how many attacks each batch meets.
    :param batch: the batch (1-based); ``batches`` is ``None`` for an iterable of unknown size.
    :param points: points evaluated so far (this batch included).
    :param robust: points still robust so far (this batch: after this attack).
    :param elapsed: seconds since the evaluation started.
    """

    attack: str
    attack_index: int
    attacks: int
    batch: int
    batches: int | None
    points: int
    robust: int
    elapsed: float

    def summary(self) -> str:
        """``"apgd-t (3/5): 301/360 robust"``: the attack that just ran and the count so far."""
        return (
            f"{self.attack} ({self.attack_index}/{self.attacks}): "
            f"{self.robust}/{self.points} robust"
        )

    @property
    def eta(self) -> float | None:
        """Seconds left, from the share of the work done (``None`` when unknown)."""
        if not self.batches:
            return None
        done = (self.batch - 1 + self.attack_index / self.attacks) / self.batches
        return self.elapsed * (1 - done) / done if done > 0 else None


def attackable(model: nn.Module, plugin_manager: Any = None) -> nn.Module:
    """The model itself, or the differentiable copy a plugin provides (INC int8 graphs)."""
    pm = plugin_manager if plugin_manager is not None else default_plugin_manager()
    copy = pm.hook.atmc_attackable_model(model=model)
    return model if copy is None else copy


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    eps: float,
    preset: str = "quick",
    batch_size: int = 256,
    progress: bool = False,
    sanity: bool = True,
    plugin_manager: Any = None,
    cascade: bool = False,
    on_progress: Callable[[EvalProgress], None] | None = None,
    label: str = "evaluate",
    channels_last: bool = True,
) -> RobustnessReport:
    """Clean and robust accuracy of ``model`` under l_inf attacks of radius ``eps``.

    :param model: a classifier returning logits; inputs in [0, 1].
    :param data: ``(x, y)`` tensors or an iterable of ``(x, y)`` batches.
    :param eps: l_inf radius in input units.
    :param preset: ``"quick"`` or ``"standard"`` (see the module docstring).
    :param batch_size: batch size when ``data`` is a pair of tensors.
    :param progress: show a tqdm progress bar (needs the ``examples`` extra).
    :param sanity: run the gradient-masking checks and warn (:class:`RobustnessWarning`).
    :param cascade: run each attack only on the points every earlier attack missed (the same
        worst case, much cheaper on weak models; ``per_attack`` becomes cumulative).
    :param on_progress: called with an :class:`EvalProgress` after each attack on each batch
        (the ``atmc`` command logs one line per attack from it).
    :param label: the progress bar's name for the model (with ``progress``).
    :param channels_last: attack a ``channels_last`` copy of a model with 2-D convolutions
        when the inputs are images (N, C, H, W): the same function with faster convolutions
        (the ``standard`` preset took 1.31x less CPU time on the digits CNN; not measured on a
        GPU); ``False`` attacks the model as it is. The model itself is never converted; the
        copy holds a second set of weights while the evaluation runs.
    """
    if preset not in PRESETS:
        raise ConfigError(f"preset = {preset!r}: choose one of {', '.join(PRESETS)}.")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps <= 1:
        raise ConfigError(
            f"eps = {eps!r} must be a number in (0, 1]: inputs are in [0, 1] pixel units."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size = {batch_size!r} must be a positive integer.")
    if data is None:
        raise InputError("data is None: give (inputs, labels) tensors or an iterable of batches.")
    flags: list[str] = []
    # An exported graph's mode was fixed at export time; its `training` flag means nothing.
    if model.training and not isinstance(model, torch.fx.GraphModule):
        flags.append("train-mode")
        _warn("the model was in train mode; it is evaluated in eval mode (and left as it was)")
    target = attackable(model, plugin_manager)
    devices = [model_device(target)] if model_device(target).type == "cuda" else []
    correct_clean = 0
    fooled_by: dict[str, int] = {}
    worst = 0
    total = 0
    square_only = 0
    grad_samples: list[Tensor] = []
    started = time.perf_counter()
    n_batches = _count_batches(data, batch_size)
    images_last = False
    with torch.random.fork_rng(devices=devices), preserved_modes(model, target):
        _to_eval(target)
        batches = _batches(data, batch_size)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            batches = bar = tqdm(
                batches, desc=f"{label} eps={eps:g}", unit="batch", total=n_batches
            )
        for index, batch in enumerate(batches, start=1):
            x, y = _check_batch(batch, total)
            x, y = x.to(model_device(target)), y.to(model_device(target))
            if index == 1 and channels_last:
                target, images_last = _channels_last(target, x)
            if images_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            try:
                with torch.no_grad():
                    logits = target(x)
            except RuntimeError as exc:
                raise InputError(
                    f"the model does not accept inputs of shape {tuple(x.shape)}: "
                    f"{str(exc).splitlines()[0][:200]}"
                ) from exc
            if logits.dim() != 2 or int(y.max()) >= logits.shape[1]:
                raise InputError(
                    f"labels must lie in 0..{logits.shape[1] - 1} for a model with "
                    f"{logits.shape[1] if logits.dim() == 2 else '?'} outputs per sample; got "
                    f"max {int(y.max())} (logits of shape {tuple(logits.shape)})."
                )
            if sanity and total == 0:
                flags += _check_outputs(logits)
            n_classes = int(logits.shape[1])
            clean = logits.argmax(1) == y
            correct_clean += int(clean.sum())
            total += len(y)
            robust = clean.clone()
            gradient_fooled = torch.zeros_like(robust)
            attacks = _attacks(target, float(eps), preset, n_classes)
            for position, (name, attack) in enumerate(attacks, start=1):
                if cascade:
                    ok = robust.clone()
                    todo = robust.nonzero().flatten()
                    if len(todo):
                        adv = attack(x[todo], y[todo])
                        with torch.no_grad():
                            ok[todo] = target(adv).argmax(1) == y[todo]
                else:
                    adv = attack(x, y)
                    with torch.no_grad():
                        ok = target(adv).argmax(1) == y
                fooled_by[name] = fooled_by.get(name, 0) + int((clean & ~ok).sum())
                if name == "square":
                    square_only += int((robust & ~ok & ~gradient_fooled).sum())
                else:
                    gradient_fooled |= clean & ~ok
                robust &= ok
                state = EvalProgress(
                    attack=name,
                    attack_index=position,
                    attacks=len(attacks),
                    batch=index,
                    batches=n_batches,
                    points=total,
                    robust=worst + int(robust.sum()),
                    elapsed=time.perf_counter() - started,
                )
                if bar is not None:
                    bar.set_postfix_str(state.summary())
                if on_progress is not None:
                    on_progress(state)
            worst += int(robust.sum())
            if sanity and len(grad_samples) < 1:
                grad_samples.append(_input_gradients(target, x[:64], y[:64]))
    if total == 0:
        raise InputError("evaluate() got no data.")
    per_attack = {k: (correct_clean - v) / total for k, v in fooled_by.items()}
    if sanity:
        flags += _check_gradients(grad_samples)
        if square_only > 0:
            flags.append("gradient-free-wins")
            _warn(
                f"Square (gradient-free) fooled {square_only} points every gradient attack missed: "
                "the gradients are likely masked (quantization, sparsity, non-differentiable ops)"
            )
    return RobustnessReport(
        eps=float(eps),
        preset=preset,
        n=total,
        clean=correct_clean / total,
        per_attack=per_attack,
        robust=worst / total,
        flags=flags,
        cascade=cascade,
    )


def eps_sweep(
    model: nn.Module, data: Any, eps_values: list[float], **kwargs: Any
) -> list[RobustnessReport]:
    """Evaluate at several radii and warn when robust accuracy does not fall as eps grows, or
    stays above zero at a radius (0.5 on [0, 1] inputs) where every image can be made grey."""
    reports = [evaluate(model, data, eps=e, **kwargs) for e in eps_values]
    for small, large in itertools.pairwise(reports):
        if large.robust > small.robust + 1e-9:
            _warn(
                f"robust accuracy rose from {small.robust:.4f} at eps {small.eps:g} to "
                f"{large.robust:.4f} at eps {large.eps:g}: the attack is not converging"
            )
    for r in reports:
        if r.eps >= 0.5 and r.robust > 0:
            _warn(f"robust accuracy {r.robust:.4f} at eps {r.eps:g} should be 0: gradient masking")
    return reports


def _channels_last(target: nn.Module, x: Tensor) -> tuple[nn.Module, bool]:
    """A ``channels_last`` copy of ``target`` and ``True``, or ``target`` and ``False`` when
    the inputs are not images, it has no 2-D convolution or it cannot be copied."""
    if x.dim() != 4 or not any(isinstance(m, nn.Conv2d) for m in target.modules()):
        return target, False
    try:
        fast = copy.deepcopy(target)
        fast.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    except (RuntimeError, TypeError, NotImplementedError):  # modules that refuse copying
        return target, False
    _to_eval(fast)
    return fast, True


def _to_eval(model: nn.Module) -> None:
    with contextlib.suppress(NotImplementedError):  # exported PT2E graphs refuse mode changes
        model.eval()


def _warn(message: str) -> None:
    warnings.warn(f"{message}. See {DOC}.", RobustnessWarning, stacklevel=3)


def _check_outputs(logits: Tensor) -> list[str]:
    sums = logits.sum(1)
    if bool((logits >= 0).all()) and bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-3)):
        _warn(
            "the model outputs look like probabilities (non-negative, rows sum to 1); attacks "
            "need logits: remove the final softmax"
        )
        return ["probability-outputs"]
    return []


def _input_gradients(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    xi = x.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = nn.functional.cross_entropy(model(xi), y)
        (grad,) = torch.autograd.grad(loss, xi, allow_unused=True)
    if grad is None:
        return torch.zeros(len(x))
    return grad.flatten(1).abs().sum(1).detach().cpu()


def _check_gradients(samples: list[Tensor]) -> list[str]:
    if not samples:
        return []
    norms = torch.cat(samples)
    share = float((norms == 0).float().mean())
    if share > 0.1:
        _warn(
            f"{share:.0%} of the inputs have an exactly zero input gradient: gradient attacks "
            "cannot work there (quantized or non-differentiable model)"
        )
        return ["zero-gradients"]
    return []
