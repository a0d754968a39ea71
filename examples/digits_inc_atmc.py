"""INC + ATMC on real data, offline: an int8 model that keeps its robustness, evaluated honestly.

1. dense adversarial training of a digits CNN (PGD-7, eps 0.1);
2. baseline: plain INC static int8 (PT2E) of that model, calibrated on clean batches;
3. ATMC: ``quantize(model, ATMCQuantConfig(bits=8, backend="pt2e"), run_fn=finetune)`` trains on
   exactly the int8 grid INC uses, then INC static int8 with adversarial calibration;
4. control: the same adversarial fine-tuning without ATMC, then plain INC static int8.

Both int8 models are attacked through their straight-through copies (white-box PGD-20 on the
deployed int8 graph, not its fp32 parent). ``--latency`` also times int8 vs fp32 under
``torch.compile`` (same batch).

    python examples/digits_inc_atmc.py [--latency]
"""

from __future__ import annotations

import argparse
import copy
import logging
from typing import Any

import torch
from atmc_plugin_adapters.inc import ATMCQuantConfig, session_of
from atmc_plugin_adapters.inc.pt2e import (
    code_agreement,
    quantize_static_int8,
    weight_movement,
)
from torch import Tensor, nn
from torch.nn import functional as F

from atmc_plugin import ATMC, ATMCConfig, AttackConfig, evaluate
from atmc_plugin.app.datasets import load_digits
from atmc_plugin.app.models import DigitsCNN
from atmc_plugin.serving import REPEATS

log = logging.getLogger("digits_inc_atmc")


def _epochs(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    perturb: Any,
    penalty: Any,
    epochs: int,
    lr: float,
    seed: int,
) -> None:
    x_tr, y_tr = data
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y_tr), generator=gen)
        for start in range(0, len(y_tr), 64):
            idx = order[start : start + 64]
            x, y = x_tr[idx], y_tr[idx]
            loss = 0.5 * F.cross_entropy(model(perturb(x, y)), y) + 0.5 * F.cross_entropy(
                model(x), y
            )
            loss = loss + penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()


def accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> tuple[float, float]:
    """Clean and robust accuracy (``evaluate``'s quick preset: PGD-20, 2 restarts); int8
    graphs are attacked through their straight-through copy (the adapter's hook)."""
    report = evaluate(model, (x, y), eps=eps)
    return report.clean, report.robust


def run(
    *,
    eps: float = 0.1,
    width: int = 32,
    dense_epochs: int = 10,
    finetune_epochs: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = load_digits(seed=0)
    attack = AttackConfig(name="pgd", eps=eps, steps=7)
    calib = [(x_tr[i : i + 128], y_tr[i : i + 128]) for i in range(0, 512, 128)]
    model = DigitsCNN(width=width)
    dense = ATMC(model, ATMCConfig(attack=attack))
    _epochs(model, (x_tr, y_tr), dense.perturb, dense.penalty, dense_epochs, 0.05, seed)
    model.eval()
    out: dict[str, Any] = {"fp32": accuracy(model, x_te, y_te, eps)}

    baseline = quantize_static_int8(model, x_tr[:8], calib)
    out["int8_plain"] = accuracy(baseline, x_te, y_te, eps)
    out["moved_plain"] = max(weight_movement(baseline).values())

    control = copy.deepcopy(model)
    at = ATMC(control, ATMCConfig(attack=attack))
    _epochs(control, (x_tr, y_tr), at.perturb, at.penalty, finetune_epochs, 0.005, seed + 1)
    out["int8_control"] = accuracy(quantize_static_int8(control, x_tr[:8], calib), x_te, y_te, eps)

    from neural_compressor.torch.quantization import quantize

    def finetune(m: nn.Module) -> None:
        s = session_of(m)
        _epochs(m, (x_tr, y_tr), s.perturb, s.penalty, finetune_epochs, 0.005, seed + 1)

    atmc_cfg = ATMCQuantConfig(bits=8, backend="pt2e", eps=eps, steps=7)
    trained = quantize(copy.deepcopy(model), atmc_cfg, run_fn=finetune)
    int8 = quantize_static_int8(trained, x_tr[:8], calib, attack=attack)
    out["int8_atmc"] = accuracy(int8, x_te, y_te, eps)
    out["moved_atmc"] = max(weight_movement(int8).values())
    out["codes_atmc"] = min(code_agreement(int8, session_of(trained).atmc).values())
    out["models"] = {"fp32": trained, "int8": int8}
    return out


def latency(fp32: nn.Module, int8: nn.Module, batch: Tensor) -> dict[str, float]:
    """Median seconds per batch of ``torch.compile``d fp32 and int8 models (same batch).

    Inductor lowers PT2E quantize/dequantize patterns to oneDNN int8 kernels only with
    ``freezing`` on (both models are compiled that way; see ``atmc_plugin.app.latency``).
    """
    from atmc_plugin.app.latency import compiled_seconds

    return {"fp32": compiled_seconds(fp32.eval(), batch), "int8": compiled_seconds(int8, batch)}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("neural_compressor").setLevel(logging.ERROR)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency", action="store_true", help="time compiled int8 vs fp32")
    args = p.parse_args()
    out = run(eps=args.eps, seed=args.seed)
    log.info("| model | clean | PGD-20 x2 (eps %.3g, via STE copy for int8) |", args.eps)
    log.info("|---|---:|---:|")
    for key, label in (
        ("fp32", "fp32 adversarially trained"),
        ("int8_plain", "INC static int8"),
        ("int8_control", "adv. fine-tune + INC static int8"),
        ("int8_atmc", "ATMC (pt2e grid) + INC static int8"),
    ):
        clean, robust = out[key]
        log.info("| %s | %.4f | %.4f |", label, clean, robust)
    # Lines that start with "- " are the facts benchmarks/recipe_figures.py puts under the table.
    log.info(
        "- max weight movement by INC's conversion: plain %.3g, ATMC %.3g",
        out["moved_plain"],
        out["moved_atmc"],
    )
    log.info(
        "- worst layer's share of INC int8 codes equal to ATMC's trained codes: %.4f",
        out["codes_atmc"],
    )
    if args.latency:
        batch = load_digits(seed=0)[2][:256]
        t = latency(out["models"]["fp32"], out["models"]["int8"], batch)
        log.info(
            "- torch.compile (inductor, freezing) latency, batch 256, median of %d calls: "
            "fp32 %.3f ms, int8 %.3f ms (ratio %.2f)",
            REPEATS,
            t["fp32"] * 1e3,
            t["int8"] * 1e3,
            t["fp32"] / t["int8"],
        )


if __name__ == "__main__":
    main()
