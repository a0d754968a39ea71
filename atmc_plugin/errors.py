"""The exceptions atmc-plugin raises.

Every error a user can cause is an :class:`ATMCError`; the ones caused by a bad value are also
:class:`ValueError` so that generic ``except ValueError`` handlers keep working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ATMCError(Exception):
    """Base class of every error raised by atmc-plugin."""


class ConfigError(ATMCError, ValueError):
    """A configuration value is invalid. The message names the field, the value and the fix."""


class InputError(ATMCError, ValueError):
    """A tensor, model or batch given at run time is unusable (wrong dtype, range, NaN ...)."""


class PluginError(ATMCError, LookupError):
    """No installed plugin can provide what was asked for (attack, projection, adapter)."""


def describe(exc: BaseException, limit: int = 300) -> str:
    """``"TypeName: first line of the message"`` (cut at ``limit``), for one-line reports of an
    error raised inside a tool."""
    text = str(exc).splitlines()[0][:limit] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """``" Did you mean 'x'?"`` for the closest of ``choices``; ``""`` if none is close."""
    matches = difflib.get_close_matches(str(value).lower(), sorted(choices), n=1, cutoff=0.5)
    return f" Did you mean {matches[0]!r}?" if matches else ""


class InternalError(ATMCError):
    """A bug in atmc-plugin, not in the input (the command exits 1): please report it with the
    command and the recipe."""

    def __init__(self, what: str) -> None:
        super().__init__(f"internal error: {what} This is a bug in atmc-plugin; please report it.")


class ScheduleWarning(UserWarning):
    """The sparsity budget's schedule does not fit the loop: it has no length to anneal over,
    or ``finalize()`` had to jump to the target in one projection."""


class OverfitWarning(UserWarning):
    """Single-step adversarial training overfitted catastrophically (PGD accuracy collapsed);
    the guard restored the last good state and switched to a multi-step attack."""


class TrainingModeWarning(UserWarning):
    """Training steps run on a model whose BatchNorm layers are in eval mode."""
