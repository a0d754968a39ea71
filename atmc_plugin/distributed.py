"""Process-group context of a run: one process, or ``torchrun`` with several."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from .build import Data
from .errors import ATMCError


@dataclass(frozen=True)
class Context:
    """Rank and world size; only rank 0 writes to the run folder."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def shard(self, data: Data) -> Data:
        """This rank's share of the training data (every rank evaluates on all test data)."""
        if self.world_size == 1:
            return data
        x, y = (
            data.x_train[self.rank :: self.world_size],
            data.y_train[self.rank :: self.world_size],
        )
        return Data(x, y, data.x_test, data.y_test)

    def wrap(self, model: nn.Module) -> nn.Module:
        return model


def context(device: torch.device) -> Context:
    """The context of this process, from torchrun's environment variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    raise ATMCError(
        f"WORLD_SIZE = {world}: multi-process runs are not supported by this version of "
        "`atmc run`; run a single process."
    )
