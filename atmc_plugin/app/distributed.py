"""Process-group context of a run: one process, or ``torchrun`` with several.

Under ``torchrun --nproc_per_node=N -m atmc_plugin run RECIPE`` every rank trains on its own
shard of the training data through ``DistributedDataParallel`` (gloo on CPU, NCCL on CUDA);
pruning decisions and ATMC's projections see identical weights on every rank, so they agree.
Only rank 0 writes the run folder and evaluates.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ATMCError
from .build import Data


@dataclass(frozen=True)
class Context:
    """Rank and world size; only rank 0 writes to the run folder."""

    rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, data: Data) -> Data:
        """This rank's equal share of the training data (every rank keeps all test data)."""
        if not self.distributed:
            return data
        n = len(data.y_train) // self.world_size
        if n == 0:
            raise ATMCError(f"{len(data.y_train)} training examples for {self.world_size} ranks.")
        take = slice(self.rank, self.rank + n * self.world_size, self.world_size)
        dataset = data.train_dataset
        if dataset is not None:
            indices = range(len(data.y_train))[take]
            dataset = torch.utils.data.Subset(dataset, indices)
        return dataclasses.replace(
            data, x_train=data.x_train[take], y_train=data.y_train[take], train_dataset=dataset
        )

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel`` around ``model`` (``model`` itself in one process)."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def all_ok(self, ok: bool) -> bool:
        """True when ``ok`` holds on every rank (one all-reduce; no-op in one process)."""
        if not self.distributed:
            return ok
        flag = torch.tensor([0.0 if ok else 1.0])
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag)
        return float(flag) == 0.0

    def mean(self, values: list[float]) -> list[float]:
        """``values`` averaged over the ranks (one all-reduce; themselves in one process)."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return [float(v) / self.world_size for v in t.cpu()]

    def check_identical(self, model: nn.Module) -> None:
        """Raise when the ranks' weights differ (DDP keeps them equal; pruning must agree).

        :raises ATMCError: a rank holds different weights or a different structure.
        """
        if not self.distributed:
            return
        params = [p.detach().double().reshape(-1) for p in model.parameters()]
        flat = torch.cat(params) if params else torch.zeros(1, dtype=torch.float64)
        summary = torch.stack([flat.sum(), flat.square().sum(), torch.tensor(float(flat.numel()))])
        if dist.get_backend() == "nccl":
            summary = summary.cuda()
        reference = summary.clone()
        dist.broadcast(reference, src=0)
        if not self.all_ok(torch.equal(summary, reference)):
            raise ATMCError(
                "the ranks ended with different weights: pruning or projection decisions "
                "disagreed; please report this with the recipe."
            )

    def close(self) -> None:
        """Tear the process group down together: on gloo every rank first waits for the others
        (rank 0 evaluates and writes while the others are done), since a rank leaving early
        could abort in gloo's teardown; a rank that died ends the wait at once."""
        if self.owns_group and dist.is_initialized():
            if dist.get_backend() == "gloo" and self.distributed:
                from datetime import timedelta

                dist.monitored_barrier(timeout=timedelta(hours=24), wait_all_ranks=True)
            dist.destroy_process_group()


def context(device: torch.device) -> Context:
    """The context of this process, from torchrun's environment variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    if not dist.is_available():
        raise ATMCError(f"WORLD_SIZE = {world} but this torch build has no torch.distributed.")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank=dist.get_rank(), world_size=dist.get_world_size(), owns_group=owns)


def local_device(device: torch.device) -> torch.device:
    """Under torchrun on CUDA, this rank's GPU (``LOCAL_RANK``)."""
    if device.type != "cuda" or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    index = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(index)
    return torch.device("cuda", index)
