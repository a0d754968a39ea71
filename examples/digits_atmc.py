"""ATMC on real data, offline: a small CNN on scikit-learn's digits.

Stages (as in the paper): dense adversarial training, then ATMC (PGD adversarial training with
the global sparsity projection every step and ADMM quantization every ``interval`` steps), then
the hard projection and adversarial fine-tuning with mask and codebooks fixed. Clean and PGD-20
accuracy (eps 0.1, random start) are printed before and after, with the size ratio.

    python examples/digits_atmc.py --density 0.05 --bits 4

The evaluation here is `evaluate`'s quick preset (PGD-20, 2 restarts); its `standard` preset
adds APGD-CE, APGD-T, FAB-T and Square (see docs/robustness.md).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from atmc_plugin import ATMC, ADMMConfig, ATMCConfig, AttackConfig, ConstraintConfig, evaluate
from atmc_plugin.app.datasets import load_digits
from atmc_plugin.app.models import DigitsCNN
from atmc_plugin.io import save_atomically

log = logging.getLogger("digits_atmc")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--density", type=float, default=0.05, help="kept fraction of conv/fc weights")
    p.add_argument("--bits", type=int, default=4, help="codebook bits; 0 = no quantization")
    p.add_argument("--eps", type=float, default=0.1, help="l_inf radius (pixels in [0, 1])")
    p.add_argument("--dense-epochs", type=int, default=30)
    p.add_argument("--atmc-epochs", type=int, default=30)
    p.add_argument("--finetune-epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--clean-weight", type=float, default=0.5, help="weight of the clean loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", type=Path, help="write model + ATMC state (weights_only loadable)")
    return p.parse_args()


def train_epoch(
    model: nn.Module,
    atmc: ATMC,
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    args: argparse.Namespace,
    gen: torch.Generator,
) -> float:
    model.train()
    order = torch.randperm(len(y), generator=gen)
    total = 0.0
    for start in range(0, len(y), args.batch_size):
        idx = order[start : start + args.batch_size]
        xb, yb = x[idx], y[idx]
        adv = atmc.perturb(xb, yb)
        loss = (1 - args.clean_weight) * F.cross_entropy(model(adv), yb)
        if args.clean_weight:
            loss = loss + args.clean_weight * F.cross_entropy(model(xb), yb)
        loss = loss + atmc.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss) * len(idx)
    return total / len(y)


def run_stage(name, model, atmc, opt, data, epochs, args, gen) -> None:
    x_tr, y_tr, _, _ = data
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    for epoch in range(epochs):
        loss = train_epoch(model, atmc, opt, x_tr, y_tr, args, gen)
        sched.step()
        if epoch == epochs - 1 or epoch % 10 == 0:
            log.info("  %s epoch %d/%d  loss %.4f", name, epoch + 1, epochs, loss)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    data = load_digits(seed=0)
    x_te, y_te = data[2], data[3]
    attack = AttackConfig(name="pgd", eps=args.eps, steps=7, alpha=2.5 * args.eps / 7)
    model = DigitsCNN()
    t0 = time.perf_counter()

    log.info("stage 1: dense adversarial training (PGD-7, eps %.3g)", args.eps)
    dense = ATMC(model, ATMCConfig(attack=attack))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    run_stage("dense", model, dense, opt, data, args.dense_epochs, args, gen)
    model.eval()
    measured = evaluate(model, (x_te, y_te), eps=args.eps)
    clean0, robust0 = measured.clean, measured.robust

    bits = args.bits or None
    config = ATMCConfig(
        attack=attack,
        constraint=ConstraintConfig(density=args.density, bits=bits),
        admm=ADMMConfig(rho=0.1, interval=10),
    )
    log.info("stage 2: ATMC (density %g, bits %s)", args.density, bits or 32)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr / 2, momentum=0.9)
    batches = -(-len(data[1]) // args.batch_size)
    # the budget anneals over the first half of the stage, then trains at the target
    atmc = ATMC(model, config, optimizer=opt, total_steps=args.atmc_epochs * batches)
    run_stage("atmc", model, atmc, opt, data, args.atmc_epochs, args, gen)

    log.info("stage 3: hard projection + adversarial fine-tuning (mask and codebooks fixed)")
    atmc.finalize()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr / 10, momentum=0.9)
    atmc.attach(opt)
    run_stage("finetune", model, atmc, opt, data, args.finetune_epochs, args, gen)
    report = atmc.report()
    model.eval()
    measured = evaluate(model, (x_te, y_te), eps=args.eps)
    clean1, robust1 = measured.clean, measured.robust

    log.info("\n%s\n", report)
    log.info("| model | clean acc | robust acc (PGD-20 x2, eps %.3g) | size ratio |", args.eps)
    log.info("|---|---:|---:|---:|")
    log.info("| dense adversarial | %.4f | %.4f | 1 |", clean0, robust0)
    log.info("| ATMC | %.4f | %.4f | %.4g |", clean1, robust1, report.size_ratio)
    log.info("total time %.1f s on %d threads", time.perf_counter() - t0, torch.get_num_threads())
    if args.save:
        payload = {
            "model": model.state_dict(),
            "atmc": atmc.state_dict(),
            "config": config.to_dict(),
        }
        save_atomically(payload, args.save)
        log.info("saved %s", args.save)


if __name__ == "__main__":
    main()
