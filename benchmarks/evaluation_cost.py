"""Where the command's evaluation spends its time: CPU seconds per attack of an ensemble.

Evaluates one digits CNN the way ``atmc run`` evaluates a model (the digits test split of
``build.py``, eps 0.1, the ``standard`` preset as a cascade, ``channels_last``) and records, for
each attack, the CPU seconds it took (``time.process_time`` of this process, summed over the
batches) and the points still robust after it. The first attack's seconds include each
batch's clean forward pass. Run it single-threaded for figures another process does not
inflate.

    python benchmarks/evaluation_cost.py --weights RUN/checkpoints/dense.pt [--threads 1]

``--weights`` takes a run's ``checkpoints/dense.pt`` (its checksum is verified) or a plain
``torch.save(model.state_dict())`` file of the recipes' ``digits_cnn``. Results go to
``benchmarks/results/evaluation_cost.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from recipe_figures import cpu_model

from atmc_plugin.app.datasets import load_digits
from atmc_plugin.app.models import DigitsCNN
from atmc_plugin.app.weights import load_weights
from atmc_plugin.errors import ATMCError
from atmc_plugin.robustness import EvalProgress, evaluate

RESULTS = Path(__file__).parent / "results" / "evaluation_cost.json"
log = logging.getLogger("evaluation_cost")


def measure(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    preset: str,
    cascade: bool,
    channels_last: bool,
    eps: float = 0.1,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``(x, y)``; CPU seconds and points left per attack."""
    seconds: dict[str, float] = {}
    robust_after: dict[str, int] = {}
    last = [time.process_time()]

    def on_progress(p: EvalProgress) -> None:
        now = time.process_time()
        seconds[p.attack] = seconds.get(p.attack, 0.0) + now - last[0]
        last[0] = now
        robust_after[p.attack] = p.robust

    wall = time.perf_counter()
    report = evaluate(
        model,
        (x, y),
        eps=eps,
        preset=preset,
        cascade=cascade,
        channels_last=channels_last,
        on_progress=on_progress,
    )
    wall = time.perf_counter() - wall
    total = sum(seconds.values())
    return {
        "attacks": {
            name: {
                "cpu_seconds": seconds[name],
                "share": seconds[name] / total if total > 0 else 0.0,
                "robust_after": robust_after[name],
            }
            for name in seconds
        },
        "cpu_seconds": total,
        "wall_seconds": wall,
        "points": len(y),
        "clean": report.clean,
        "robust": report.robust,
    }


def table(result: dict[str, Any]) -> str:
    """The per-attack rows as Markdown."""
    lines = [
        "| attack | CPU s | share | robust after |",
        "|---|---:|---:|---:|",
    ]
    for name, row in result["attacks"].items():
        lines.append(
            f"| {name} | {row['cpu_seconds']:.1f} | {row['share']:.1%} | "
            f"{row['robust_after']}/{result['points']} |"
        )
    lines.append(f"| all | {result['cpu_seconds']:.1f} | 100% | {result['robust']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--width", type=int, default=32, help="the digits_cnn's [model] width")
    parser.add_argument("--points", type=int, default=360, help="test points (360: all)")
    parser.add_argument("--preset", default="standard", choices=("quick", "standard"))
    parser.add_argument("--no-cascade", action="store_true")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads < 1 or args.points < 1:
        raise SystemExit(f"--threads {args.threads} and --points {args.points} must be >= 1.")
    torch.set_num_threads(args.threads)
    model = DigitsCNN(width=args.width)
    try:
        load_weights(model, args.weights, "--weights")
    except ATMCError as exc:
        raise SystemExit(str(exc)) from None
    model.eval()
    _, _, x, y = load_digits(seed=0)
    x, y = x[: args.points], y[: args.points]
    result = measure(
        model,
        x,
        y,
        preset=args.preset,
        cascade=not args.no_cascade,
        channels_last=not args.no_channels_last,
    )
    result.update(
        preset=args.preset,
        cascade=not args.no_cascade,
        channels_last=not args.no_channels_last,
        threads=args.threads,
        machine=cpu_model(),
        torch=torch.__version__,
        weights=str(args.weights),
        date=datetime.date.today().isoformat(),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    log.info("\n%s", table(result))
    log.info(
        "%s, %d thread(s), one run, %.0f s wall; written to %s",
        result["machine"],
        args.threads,
        result["wall_seconds"],
        args.out,
    )


if __name__ == "__main__":
    main()
