"""The overfitting guard across ``atmc run``'s stages (``[guard]``; :mod:`atmc_plugin.guard`).

With ``enabled = "auto"`` the guard runs when ``[atmc.attack]`` is single-step. The last
``points`` examples of the training split are held out (not trained on) and checked every
``every`` optimizer steps (default: once per epoch). Each stage gets a fresh guard (the
stages' robust accuracy differs by design); once one fired, every later stage trains with
the PGD fallback from its start. Events go to ``metrics.jsonl`` (``"kind": "guard"``) and
``results.json`` (``"guard"``); the rule's memory is in every checkpoint, so ``--resume``
decides as an uninterrupted run would.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..guard import GuardConfig, OverfitGuard, Stateful, fallback_attack, guard_wanted
from .build import Data
from .recipe import Recipe

log = logging.getLogger(__name__)


class RunGuard:
    """The guard of one run: held-out split, one :class:`OverfitGuard` per stage, the record.

    :param recipe: the validated recipe (its ``[guard]`` and ``[atmc.attack]``).
    :param data: the run's data (this rank's share under ``torchrun``).
    :param reduce: averages the measured accuracies over the ranks (identity in one process),
        so every rank takes the same decision.
    """

    def __init__(
        self,
        recipe: Recipe,
        data: Data,
        reduce: Callable[[list[float]], list[float]] | None = None,
    ) -> None:
        self.config: GuardConfig = recipe.guard
        self.on = guard_wanted(self.config, recipe.atmc.attack)
        self.points = min(self.config.points, len(data.y_train) // 2) if self.on else 0
        n = len(data.y_train)
        self.held_out = (data.x_train[n - self.points :], data.y_train[n - self.points :])
        self.reduce = reduce
        self.guard: OverfitGuard | None = None
        self.stage = ""
        self.fallback: Any = None  # the PGD attack training continues with after a firing
        self.finished: list[dict[str, Any]] = []  # the summaries of earlier stages' guards

    def training_part(self, dataset: Any) -> Any:
        """``dataset`` without the held-out examples (the last ``points``)."""
        if not self.points:
            return dataset
        return torch.utils.data.Subset(dataset, range(len(dataset) - self.points))

    def start(
        self,
        stage: str,
        atmc: Any,
        every: int,
        states: Callable[[], Mapping[str, Stateful]],
    ) -> None:
        """Watch ``stage`` (trained with ``atmc``'s attack), or train it with the fallback."""
        if self.guard is not None:
            self.finished.append({"stage": self.stage, **self.guard.summary()})
        self.guard, self.stage = None, stage
        if self.fallback is not None:
            atmc.set_attack(self.fallback)
            return
        if self.on:
            self.guard = OverfitGuard(
                atmc,
                self.held_out,
                every=self.config.every or every,
                config=self.config,
                states=states,
                reduce=self.reduce,
            )

    def after_step(self, epoch: int) -> dict[str, Any] | None:
        """Count a step; a metrics record when the guard fired."""
        if self.guard is None:
            return None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            event = self.guard.step()
        for w in caught:
            log.warning("%s", w.message)
        if event is None:
            return None
        self.fallback = self.guard.fallback
        return {"kind": "guard", "stage": self.stage, "epoch": epoch + 1, **event.to_dict()}

    def last_check(self) -> dict[str, float]:
        """The last check's accuracies (for the epoch record), ``{}`` when unwatched."""
        return dict(self.guard.last) if self.guard is not None else {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "guard": self.guard.state_dict() if self.guard is not None else None,
            "fallback": self.fallback is not None,
            "finished": list(self.finished),
        }

    def load_state_dict(self, state: Mapping[str, Any], atmc: Any) -> None:
        """Restore after :meth:`start` of the checkpoint's stage."""
        self.finished = list(state["finished"])
        if state["guard"] is not None and self.guard is not None:
            self.guard.load_state_dict(state["guard"])
            if self.guard.fired:
                self.fallback = self.guard.fallback
        elif state["fallback"] and self.fallback is None:
            self.fallback = fallback_attack(atmc.config.attack, self.config)
            atmc.set_attack(self.fallback)

    def summary(self) -> dict[str, Any]:
        """``results.json``'s ``"guard"``: on or off, checks, seconds, the firings."""
        stages = list(self.finished)
        if self.guard is not None:
            stages.append({"stage": self.stage, **self.guard.summary()})
        return {
            "enabled": self.on,
            "held_out": self.points,
            "checks": sum(s["checks"] for s in stages),
            "seconds": sum(s["seconds"] for s in stages),
            "fired": [{"stage": s["stage"], **e} for s in stages for e in s["fired"]],
            "fallback": self.fallback.name + str(self.fallback.steps) if self.fallback else None,
        }
