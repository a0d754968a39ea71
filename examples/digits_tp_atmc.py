"""Torch-Pruning + ATMC on real data, offline: the user's pruning loop with two lines changed.

A digits CNN is pruned by Torch-Pruning's ``GroupNormPruner`` (channels physically removed) while
ATMC trains it adversarially under a global sparsity budget with 4-bit codebooks, scored by the
ADMM-proxy importance. Prints clean and PGD-20 accuracy, MACs, parameters and the size ratio.

    python examples/digits_tp_atmc.py --pruning-ratio 0.5 --density 0.05 --bits 4
    python examples/digits_tp_atmc.py --no-attack      # the same schedule without the attack
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import torch
import torch_pruning as tp
from atmc_plugin_adapters.torchpruning import ADMMProxyImportance
from torch.nn import functional as F

import atmc_plugin
from atmc_plugin import ADMMConfig, ATMCConfig, AttackConfig, ConstraintConfig, evaluate
from atmc_plugin.app.datasets import load_digits
from atmc_plugin.app.models import DigitsCNN

log = logging.getLogger("digits_tp_atmc")


def run(
    *,
    attack: bool = True,
    pruning_ratio: float = 0.5,
    density: float = 0.05,
    bits: int | None = 4,
    eps: float = 0.1,
    width: int = 32,
    warmup_epochs: int = 10,
    steps: int = 4,
    epochs_per_step: int = 5,
    finetune_epochs: int = 5,
    batch_size: int = 64,
    lr: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Warm-up, then ``steps`` x (prune, train ``epochs_per_step``), then finalize + fine-tune."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_tr, y_tr, x_te, y_te = load_digits(seed=0)
    model = DigitsCNN(width=width)
    example = x_tr[:1]
    pruner = tp.pruner.GroupNormPruner(
        model,
        example,
        importance=ADMMProxyImportance(),
        pruning_ratio=pruning_ratio,
        iterative_steps=steps,
        ignored_layers=[model.fc],
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    config = ATMCConfig(
        attack=AttackConfig(name="pgd", eps=eps, steps=7) if attack else None,
        constraint=ConstraintConfig(density=density, bits=bits),
        admm=ADMMConfig(rho=0.1, interval=10),
    )
    pruner = atmc_plugin.wrap(pruner, config, optimizer=optimizer, example_inputs=example)

    def epoch() -> None:
        model.train()
        order = torch.randperm(len(y_tr), generator=gen)
        for start in range(0, len(y_tr), batch_size):
            idx = order[start : start + batch_size]
            x, y = x_tr[idx], y_tr[idx]
            x_adv = pruner.perturb(x, y)
            loss = 0.5 * F.cross_entropy(model(x_adv), y) + 0.5 * F.cross_entropy(model(x), y)
            loss = loss + pruner.penalty()
            optimizer.zero_grad()
            loss.backward()
            pruner.regularize(model)
            optimizer.step()

    t0 = time.perf_counter()
    for _ in range(warmup_epochs):
        epoch()
    for step in range(pruner.iterative_steps):
        pruner.step()
        for _ in range(epochs_per_step):
            epoch()
        log.info(
            "  step %d/%d: params %d", step + 1, steps, sum(p.numel() for p in model.parameters())
        )
    pruner.finalize()
    for group in optimizer.param_groups:
        group["lr"] = lr / 10
    for _ in range(finetune_epochs):
        epoch()
    report = pruner.report()
    model.eval()
    measured = evaluate(model, (x_te, y_te), eps=eps)
    clean, robust = measured.clean, measured.robust
    return {
        "attack": attack,
        "clean": clean,
        "pgd20": robust,
        "report": report,
        "seconds": time.perf_counter() - t0,
        "model": model,
        "pruner": pruner,
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pruning-ratio", type=float, default=0.5)
    p.add_argument("--density", type=float, default=0.05)
    p.add_argument("--bits", type=int, default=4, help="0 = no quantization")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--epochs-per-step", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-attack", action="store_true")
    args = p.parse_args()
    out = run(
        attack=not args.no_attack,
        pruning_ratio=args.pruning_ratio,
        density=args.density,
        bits=args.bits or None,
        eps=args.eps,
        steps=args.steps,
        epochs_per_step=args.epochs_per_step,
        seed=args.seed,
    )
    r = out["report"]
    log.info("\n%s\n", r)
    log.info(
        "| attack | clean | PGD-20 (eps %.3g) | channels removed | params | MACs | size ratio |",
        args.eps,
    )
    log.info("|---|---:|---:|---:|---:|---:|---:|")
    log.info(
        "| %s | %.4f | %.4f | %.3f | %d / %d | %d / %d | %.4g |",
        "PGD-7" if out["attack"] else "none",
        out["clean"],
        out["pgd20"],
        r.channel_ratio,
        r.params,
        r.dense_params,
        r.macs,
        r.dense_macs,
        r.size_ratio,
    )
    log.info("time %.1f s on %d threads", out["seconds"], torch.get_num_threads())


if __name__ == "__main__":
    main()
