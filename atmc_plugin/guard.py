"""Catch catastrophic overfitting of single-step adversarial training, and recover from it.

Single-step attacks (``fgsm``, ``ffgsm``, ``nfgsm``) cost one forward-backward pass per batch
instead of k+1 for PGD-k, but training on them can *overfit catastrophically* (Wong et al.
2020): within a few epochs the model learns to defeat the single-step attack while its
robustness to multi-step attacks falls to about zero. Its signature is a gap: accuracy under
the training attack stays high while PGD accuracy collapses.

The rule (:class:`GuardConfig`, defaults in brackets). Every ``every`` optimizer steps the
guard measures, on a fixed batch held out of training, in eval mode and without touching the
global random stream:

- ``r``: PGD-``pgd_steps`` [10] accuracy (step eps/4, random start) at the training eps;
- ``s``: accuracy under the training attack itself.

With ``best`` the highest ``r`` so far, the check is

- **collapsed** when ``r < drop * best`` [0.5], ``best - r >= min_drop`` [0.1] *and*
  ``s - r >= gap`` [0.2]: robustness fell to less than half of its best, by a real margin,
  while the training attack still looks defeated (a model that just lost capacity, as a very
  small budget does, loses both and is not flagged; one that was never robust has nothing to
  lose);
- **healthy** when ``r >= keep * best`` [0.8]: the guard keeps a copy of the states (model,
  optimizer, ATMC) as the last good state, replacing the previous copy.

On a collapse the guard restores the last good state (when its tensor shapes still match the
model: a structural pruning step in between makes it unusable, and the event says
``restored: false``), switches the training attack to PGD-``fallback_steps`` [7] at the same
eps for the rest of training, warns (:class:`~atmc_plugin.errors.OverfitWarning`) and records
a :class:`GuardEvent`. It stops checking after it fired: multi-step training does not overfit
this way. The learning-rate schedule is not rewound.

Cost: one PGD-``pgd_steps`` attack and one training attack on ``points`` examples per check, and a
copy of the states in memory (about three times the model's size with SGD momentum).
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .adversary import Adversary, model_device
from .config import SINGLE_STEP_ATTACKS, AttackConfig, _fail, _number
from .errors import ConfigError, InputError, OverfitWarning, did_you_mean
from .modes import preserved_modes

__all__ = ["GuardConfig", "GuardEvent", "OverfitGuard", "fallback_attack", "guard_wanted"]


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


@dataclass(frozen=True)
class GuardConfig:
    """Settings of :class:`OverfitGuard` (the rule is in the module docstring).

    :param enabled: ``"auto"`` (on when the training attack is single-step: ``fgsm``,
        ``ffgsm``, ``nfgsm``), ``"on"`` or ``"off"``. Read by the ``atmc`` command and
        :func:`guard_wanted`; a guard you build yourself always checks.
    :param points: size of the held-out batch (the command takes it from the end of the
        training split and does not train on it).
    :param every: optimizer steps between checks; ``None``: once per epoch in the command.
    :param pgd_steps: PGD iterations of the check.
    :param drop: collapsed below ``drop * best``.
    :param min_drop: ... and at least ``min_drop`` below ``best``.
    :param gap: ... and at least ``gap`` below the training attack's accuracy.
    :param keep: a check at or above ``keep * best`` is the new last good state.
    :param fallback_steps: PGD iterations of the attack training continues with.
    """

    enabled: str = "auto"
    points: int = 128
    every: int | None = None
    pgd_steps: int = 10
    drop: float = 0.5
    min_drop: float = 0.1
    gap: float = 0.2
    keep: float = 0.8
    fallback_steps: int = 7

    def __post_init__(self) -> None:
        s = "guard"
        if self.enabled not in ("auto", "on", "off"):
            raise _fail(s, "enabled", self.enabled, 'choose "auto", "on" or "off".')
        _number(s, "points", self.points, integer=True, low=8, high=1_000_000)
        if self.every is not None:
            _number(s, "every", self.every, integer=True, low=1, high=10_000_000)
        _number(s, "pgd_steps", self.pgd_steps, integer=True, low=1, high=1000)
        _number(s, "drop", self.drop, low=0.0, low_open=True, high=1.0)
        _number(s, "min_drop", self.min_drop, low=0.0, high=1.0)
        _number(s, "gap", self.gap, low=0.0, high=1.0)
        _number(s, "keep", self.keep, low=0.0, low_open=True, high=1.0)
        _number(s, "fallback_steps", self.fallback_steps, integer=True, low=2, high=1000)
        if self.keep < self.drop:
            raise _fail(
                s,
                "keep",
                self.keep,
                f"keep must be >= drop ({self.drop}): a state kept as good must not itself "
                "count as collapsed.",
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GuardConfig:
        """From a recipe's ``[guard]`` table; unknown keys are named with the valid ones."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"guard must be a table, got {type(data).__name__}.")
        fields = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in fields:
                raise ConfigError(
                    f"guard has an unknown key {key!r}.{did_you_mean(str(key), fields)} "
                    f"Valid keys: {', '.join(fields)}."
                )
        return cls(**dict(data))


def fallback_attack(attack: AttackConfig, config: GuardConfig) -> AttackConfig:
    """The multi-step attack training continues with after a collapse: PGD-``fallback_steps``
    at the same eps (and normalization)."""
    return AttackConfig(
        name="pgd", eps=attack.eps, steps=config.fallback_steps, mean=attack.mean, std=attack.std
    )


def guard_wanted(guard: GuardConfig, attack: AttackConfig | None) -> bool:
    """Whether the guard runs for this training attack (``enabled`` resolved)."""
    if attack is None or guard.enabled == "off":
        return False
    return guard.enabled == "on" or attack.name in SINGLE_STEP_ATTACKS


@dataclass(frozen=True)
class GuardEvent:
    """One firing of the guard: where, what it measured, and what it did."""

    step: int
    robust: float
    best: float
    train_attack_acc: float
    restored: bool
    restored_step: int | None
    fallback: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class OverfitGuard:
    """Watches single-step adversarial training for catastrophic overfitting (module docstring).

    ::

        guard = OverfitGuard(atmc, (x_held_out, y_held_out), optimizer=opt, every=50)
        for x, y in loader:
            ...; opt.step()
            guard.step()          # checks every 50 steps; restores and switches on a collapse

    :param atmc: the :class:`~atmc_plugin.ATMC` whose attack trains the model; on a collapse its
        attack becomes PGD (:meth:`ATMC.set_attack`).
    :param held_out: ``(x, y)`` examples that are not trained on (pixels in [0, 1]).
    :param optimizer: restored with the model (optional).
    :param every: optimizer steps between checks in :meth:`step` (default ``config.every``).
    :param config: the rule's settings.
    :param states: what a restore covers, ``{name: object with state_dict/load_state_dict}``,
        or a callable returning it (read at each snapshot: for tools that replace their
        optimizer); default: the model, ``optimizer`` and ``atmc``.
    :param reduce: combines the measured ``[robust, train_attack_acc]`` over processes (under
        ``torchrun`` each rank holds out its own batch; averaging keeps the decision common).
    """

    def __init__(
        self,
        atmc: Any,
        held_out: tuple[Tensor, Tensor],
        *,
        optimizer: torch.optim.Optimizer | None = None,
        every: int | None = None,
        config: GuardConfig | None = None,
        states: Mapping[str, Stateful] | Callable[[], Mapping[str, Stateful]] | None = None,
        reduce: Callable[[list[float]], list[float]] | None = None,
    ) -> None:
        self.config = config if config is not None else GuardConfig()
        attack = getattr(getattr(atmc, "config", None), "attack", None)
        if not isinstance(attack, AttackConfig):
            raise ConfigError(
                "the guard watches adversarial training: give an ATMC whose config has an attack "
                f"(got {type(atmc).__name__} with attack {attack!r})."
            )
        self.every = every if every is not None else self.config.every
        if self.every is not None:
            _number("guard", "every", self.every, integer=True, low=1, high=10_000_000)
        x, y = _check_held_out(held_out)
        self.atmc = atmc
        self.x, self.y = x, y
        self.eps = attack.eps
        self.fallback = fallback_attack(attack, self.config)
        self.reduce = reduce
        self._check_attack = AttackConfig(
            name="pgd",
            eps=attack.eps,
            steps=self.config.pgd_steps,
            alpha=attack.eps / 4,
            mean=attack.mean,
            std=attack.std,
        )
        default = {"model": atmc.module, "atmc": atmc}
        if optimizer is not None:
            default["optimizer"] = optimizer
        self._states = states if states is not None else default
        self.steps = 0
        self.checks = 0
        self.seconds = 0.0
        self.best = 0.0
        self.last: dict[str, float] = {}
        self.events: list[GuardEvent] = []
        self._snapshot: tuple[int, dict[str, Any]] | None = None
        self._pgd: Adversary | None = None  # the check's attack, built at the first check

    @property
    def fired(self) -> bool:
        return bool(self.events)

    def step(self) -> GuardEvent | None:
        """Count one optimizer step; check when ``every`` steps have passed since the last."""
        self.steps += 1
        if self.every is None:
            raise ConfigError(
                "OverfitGuard.step() needs every= (steps between checks); or call check() "
                "yourself, e.g. once per epoch."
            )
        if self.fired or self.steps % self.every:
            return None
        return self.check()

    def check(self) -> GuardEvent | None:
        """Measure, keep the state if healthy, restore and switch attack if collapsed."""
        if self.fired:
            return None
        started = time.perf_counter()
        robust, single = self._measure()
        self.checks += 1
        self.last = {"robust": robust, "train_attack_acc": single}
        event = None
        c = self.config
        if (
            robust < c.drop * self.best
            and self.best - robust >= c.min_drop
            and single - robust >= c.gap
        ):
            event = self._recover(robust, single)
        else:
            self.best = max(self.best, robust)
            if robust >= self.config.keep * self.best:
                self._snapshot = (self.steps, self._copy_states())
        self.seconds += time.perf_counter() - started
        return event

    def _measure(self) -> tuple[float, float]:
        model = self.atmc.module
        device = model_device(model)
        x, y = self.x.to(device), self.y.to(device)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), preserved_modes(model):
            model.eval()
            if self._pgd is None:
                self._pgd = Adversary(model, self._check_attack, self.atmc.plugin_manager)
            robust = _accuracy(model, self._pgd(x, y), y)
            single = _accuracy(model, self.atmc.perturb(x, y), y)
        if self.reduce is not None:
            robust, single = self.reduce([robust, single])
        return robust, single

    def _recover(self, robust: float, single: float) -> GuardEvent:
        restored, at = False, None
        if self._snapshot is not None:
            at, saved = self._snapshot
            restored = self._restore(saved)
        self.atmc.set_attack(self.fallback)
        event = GuardEvent(
            step=self.steps,
            robust=robust,
            best=self.best,
            train_attack_acc=single,
            restored=restored,
            restored_step=at if restored else None,
            fallback=f"pgd{self.fallback.steps}",
        )
        self.events.append(event)
        self._snapshot = None
        back = (
            f"restored the state of step {at}"
            if restored
            else "no usable earlier state (none kept, or pruning changed the shapes since)"
        )
        warnings.warn(
            f"catastrophic overfitting at step {self.steps}: PGD-{self.config.pgd_steps} accuracy "
            f"on the held-out batch fell to {robust:.3f} (best {self.best:.3f}) while the training "
            f"attack's is {single:.3f}; {back} and training continues with "
            f"PGD-{self.fallback.steps}. To avoid it: nfgsm, a smaller eps, or pgd from the start.",
            OverfitWarning,
            stacklevel=3,
        )
        return event

    def _current_states(self) -> Mapping[str, Stateful]:
        return self._states() if callable(self._states) else self._states

    def _copy_states(self) -> dict[str, Any]:
        return {
            name: copy.deepcopy(obj.state_dict()) for name, obj in self._current_states().items()
        }

    def _restore(self, saved: dict[str, Any]) -> bool:
        states = self._current_states()
        model = states.get("model")
        if set(saved) != set(states) or (
            isinstance(model, nn.Module) and not _same_shapes(saved["model"], model.state_dict())
        ):
            return False
        for name, obj in states.items():
            obj.load_state_dict(copy.deepcopy(saved[name]))
        return True

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The rule's memory (not the kept copy): after a resume the next healthy check keeps a
        new one."""
        return {
            "steps": self.steps,
            "checks": self.checks,
            "seconds": self.seconds,
            "best": self.best,
            "events": [e.to_dict() for e in self.events],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.checks = int(state["checks"])
        self.seconds = float(state["seconds"])
        self.best = float(state["best"])
        self.events = [GuardEvent(**e) for e in state["events"]]
        if self.fired:
            self.atmc.set_attack(self.fallback)

    def summary(self) -> dict[str, Any]:
        """``{"checks", "seconds", "best", "fired": [event dicts]}`` for reports."""
        return {
            "checks": self.checks,
            "seconds": self.seconds,
            "best": self.best,
            "fired": [e.to_dict() for e in self.events],
        }


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _same_shapes(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    return set(a) == set(b) and all(tuple(a[k].shape) == tuple(b[k].shape) for k in a)


def _check_held_out(held_out: Any) -> tuple[Tensor, Tensor]:
    if (
        not isinstance(held_out, (tuple, list))
        or len(held_out) != 2
        or not all(isinstance(t, Tensor) for t in held_out)
    ):
        raise InputError(
            f"held_out must be (inputs, labels) tensors, got {type(held_out).__name__}; keep a "
            "batch of the training data out of training for it."
        )
    x, y = held_out
    if len(x) != len(y) or len(y) == 0:
        raise InputError(f"held_out has {len(x)} inputs and {len(y)} labels; give one per input.")
    return x.detach(), y.detach()
