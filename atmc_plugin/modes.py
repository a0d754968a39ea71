"""Leaving a user's model in the train/eval modes it came in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def preserved_modes(*models: nn.Module) -> Iterator[None]:
    """Restore every submodule's ``training`` flag on exit, whatever happened inside.

    Flags are restored one by one (not with a blanket ``model.train()``), so a BatchNorm the
    user froze stays frozen.
    """
    saved = [(m, m.training) for model in models for m in model.modules()]
    try:
        yield
    finally:
        for module, flag in saved:
            module.training = flag
