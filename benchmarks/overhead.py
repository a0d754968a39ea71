"""Overhead of ATMC per adversarial training step, against the same step without it.

Model: CIFAR ResNet-20 (0.27M parameters), synthetic 3x32x32 batches of 128, PGD-7.

- plain: torchattacks PGD-7 on the model in eval mode, then one SGD step on the adversarial
  batch - the floor any adversarial trainer pays (about 8 forward/backward passes);
- wrapped: the same, through ``atmc_plugin.wrap`` on a Torch-Pruning ``GroupNormPruner``:
  ``pruner.perturb`` (mode/gradient guards), ``+ pruner.penalty()`` (ADMM term, 8-bit codebooks)
  and the global sparsity projection after every optimizer step (density 0.1), ADMM updates every
  10 steps.

The two are timed interleaved (plain, wrapped, plain, ...) in one process; the result is the
median of the per-pair ratios. Results go to ``benchmarks/results/overhead.json``; with
``--precision bf16`` both steps run their forward passes and the attack under bf16 autocast
(``overhead_bf16.json``; ATMC's projections and ADMM state stay fp32).

    python benchmarks/overhead.py [--pairs 15] [--warmup 3] [--precision bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
import torchattacks
from torch.nn import functional as F

import atmc_plugin
from atmc_plugin import ADMMConfig, ATMCConfig, AttackConfig, ConstraintConfig
from atmc_plugin.app.models import CifarResNet

RESULTS = Path(__file__).parent / "results" / "overhead.json"
EPS = 8 / 255


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(128, 3, 32, 32, generator=g), torch.randint(0, 10, (128,), generator=g)


def _autocast(precision: str) -> Any:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def make_plain(precision: str = "fp32") -> Any:
    torch.manual_seed(0)
    model = CifarResNet(20)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    attack = torchattacks.PGD(model, eps=EPS, alpha=EPS / 4, steps=7, random_start=True)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with _autocast(precision):
            model.eval()
            adv = attack(x, y)
            model.train()
            loss = F.cross_entropy(model(adv), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def make_wrapped(precision: str = "fp32") -> Any:
    torch.manual_seed(0)
    model = CifarResNet(20)
    example = torch.rand(1, 3, 32, 32)
    pruner = tp.pruner.GroupNormPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        iterative_steps=5,
        ignored_layers=[model.fc],
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    config = ATMCConfig(
        attack=AttackConfig(name="pgd", eps=EPS, steps=7, alpha=EPS / 4),
        constraint=ConstraintConfig(density=0.1, bits=8),
        admm=ADMMConfig(interval=10, projection_interval=1),
    )
    wrapped = atmc_plugin.wrap(pruner, config, optimizer=opt)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with _autocast(precision):
            adv = wrapped.perturb(x, y)
            model.train()
            loss = F.cross_entropy(model(adv), y)
        loss = loss.float() + wrapped.penalty()  # the ADMM term in fp32
        opt.zero_grad()
        loss.backward()
        wrapped.regularize(model)
        opt.step()

    return step


def run(pairs: int, warmup: int, precision: str = "fp32") -> dict[str, Any]:
    plain, wrapped = make_plain(precision), make_wrapped(precision)
    x, y = _batch(0)
    for _ in range(warmup):
        plain(x, y)
        wrapped(x, y)
    t_plain, t_wrapped, ratios = [], [], []
    for i in range(pairs):
        x, y = _batch(i + 1)
        start = time.perf_counter()
        plain(x, y)
        a = time.perf_counter() - start
        start = time.perf_counter()
        wrapped(x, y)
        b = time.perf_counter() - start
        t_plain.append(a)
        t_wrapped.append(b)
        ratios.append(b / a)
    return {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "model": "CifarResNet-20, batch 128, 3x32x32, PGD-7",
        "precision": precision,
        "pairs": pairs,
        "plain_median_s": statistics.median(t_plain),
        "wrapped_median_s": statistics.median(t_wrapped),
        "median_ratio": statistics.median(ratios),
        "ratio_quartiles": statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.out is None:
        args.out = (
            RESULTS.with_name(f"overhead_{args.precision}.json")
            if (args.precision != "fp32")
            else RESULTS
        )
    result = run(args.pairs, args.warmup, args.precision)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"plain {result['plain_median_s'] * 1e3:.1f} ms, wrapped "
        f"{result['wrapped_median_s'] * 1e3:.1f} ms per step; median ratio "
        f"{result['median_ratio']:.3f} over {args.pairs} interleaved pairs "
        f"({result['machine']['cpu_count']} CPUs, {result['machine']['torch_threads']} threads)"
    )


if __name__ == "__main__":
    main()
