"""DDP: 2 CPU processes (gloo) prune and train; the ATMC state stays identical on every rank."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch_pruning as tp
from atmc_plugin_adapters.torchpruning import ADMMProxyImportance
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

import atmc_plugin
from atmc_plugin import ATMCConfig
from atmc_plugin.app.models import DigitsCNN

WORLD = 2


def _worker(rank: int, init_file: str) -> None:
    import warnings

    warnings.simplefilter("ignore")  # child processes do not inherit pytest's filters
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)  # identical initial model on every rank
        model = DigitsCNN(width=8)
        ex = torch.rand(1, 1, 8, 8)
        pruner = tp.pruner.GroupNormPruner(
            model,
            ex,
            importance=ADMMProxyImportance(),
            pruning_ratio=0.5,
            iterative_steps=2,
            ignored_layers=[model.fc],
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        cfg = ATMCConfig.from_dict(
            {
                "attack": {"eps": 0.1, "steps": 2},
                "constraint": {"density": 0.1, "bits": 3},
                "admm": {"interval": 2},
            }
        )
        wrapped = atmc_plugin.wrap(pruner, cfg, optimizer=opt)
        data = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
        for _ in range(wrapped.iterative_steps):
            wrapped.step()  # identical weights -> identical channels on every rank
            ddp = DistributedDataParallel(model)  # rebuilt: pruning replaced the parameters
            ddp.train()
            for _ in range(3):
                x = torch.rand(8, 1, 8, 8, generator=data)
                y = torch.randint(0, 10, (8,), generator=data)
                x_adv = wrapped.perturb(x, y)
                loss = F.cross_entropy(ddp(x_adv), y) + wrapped.penalty()
                opt.zero_grad()
                loss.backward()
                opt.step()
        wrapped.finalize()
        flat = torch.cat([p.detach().reshape(-1) for p in wrapped.atmc.parameters().values()])
        gathered = [torch.zeros_like(flat) for _ in range(WORLD)]
        dist.all_gather(gathered, flat)
        if not torch.equal(gathered[0], gathered[1]):
            raise AssertionError("compressed weights differ between ranks")
        if not torch.equal(gathered[0] != 0, gathered[1] != 0):
            raise AssertionError("sparsity masks differ between ranks")
        if wrapped.report().elementwise.nnz > wrapped.target_budget:
            raise AssertionError("budget exceeded")
        dist.barrier()  # leave together: a rank tearing gloo down early can abort its peer
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_ddp_two_processes_gloo(tmp_path) -> None:
    init_file = str(tmp_path / "dist_init")
    env = {"OMP_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        mp.spawn(_worker, args=(init_file,), nprocs=WORLD, join=True)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
