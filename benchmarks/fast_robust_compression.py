"""Single-step against PGD-7 adversarial training inside ATMC, side by side, one run.

Same protocol as ``robust_compression.py`` (digits, ``DigitsCNN(width=32)``, eps 0.1, 30
epochs of PGD-7 pre-training per seed, then 30 epochs per row with the last 5 fine-tuning,
the ``standard`` ensemble run as a cascade), on these rows:

- ``ATMC 4-bit`` and ``ATMC 2-bit`` at size ratios 1e-2 and 3e-3;
- ``TP + ATMC (wrap)`` (GroupNormPruner, channels 0.5, ATMC through ``atmc_plugin.wrap``)
  at 1e-2 and 3e-3;

each trained with ``pgd7`` (step eps/4), ``ffgsm`` (FGSM with a random start, step 1.25 eps,
Wong et al. 2020) and ``nfgsm`` (noise 2 eps, step eps, de Jorge et al. 2022), 3 seeds. The
single-step rows run the overfitting guard (:class:`atmc_plugin.OverfitGuard`, defaults,
checked once per epoch on 128 training examples that no row trains on). Columns: worst case of
the ensemble, clean accuracy, training seconds and their ratio to the PGD-7 row of the same
method, ratio and seed (the same process, one after the other), forward-backward passes per
training step (clean + attack + adversarial), and whether the guard fired.

    python benchmarks/fast_robust_compression.py --resume   # hours on 2 CPU cores
    python benchmarks/fast_robust_compression.py --smoke    # a minute: the pipeline only

On a 2-core machine, two single-threaded workers (one per ratio, same ``--out``) halve the
wall time; their time ratios use each process's CPU seconds, which other processes on the
machine do not inflate::

    for r in 0.01 0.003; do
      python benchmarks/fast_robust_compression.py --resume --threads 1 --ratios $r &
    done; wait; python benchmarks/fast_robust_compression.py --summarize

Each finished run is appended to ``results/fast_robust_compression.runs.jsonl`` and skipped on
a rerun with ``--resume``; the summary goes to ``fast_robust_compression.json`` / ``.md`` /
``.png``. Run it from a frozen copy of the tree (a git worktree).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import robust_compression as rc
from recipe_figures import cpu_model

from atmc_plugin import AttackConfig, OverfitGuard, evaluate
from atmc_plugin.app.datasets import load_digits
from atmc_plugin.app.models import DigitsCNN

log = logging.getLogger("fast_robust_compression")
RESULTS = rc.RESULTS
NAME = "fast_robust_compression"
HELD_OUT = 128
ATTACKS: dict[str, AttackConfig] = {
    "pgd7": rc.TRAIN_ATTACK,
    "ffgsm": AttackConfig(name="ffgsm", eps=rc.EPS),
    "nfgsm": AttackConfig(name="nfgsm", eps=rc.EPS),
}
PASSES = {"pgd7": 9, "ffgsm": 3, "nfgsm": 3}  # clean + attack steps + adversarial
METHODS = ("ATMC 4-bit", "ATMC 2-bit", "TP + ATMC (wrap)")
RATIOS = (1e-2, 3e-3)


def setup_for(epochs: int, finetune: int) -> tuple[rc.Setup, tuple[torch.Tensor, torch.Tensor]]:
    """The protocol's data with the last 128 training examples held out (for the guard)."""
    x_tr, y_tr, x_te, y_te = load_digits(seed=0)
    held_out = (x_tr[-HELD_OUT:], y_tr[-HELD_OUT:])
    data = (x_tr[:-HELD_OUT], y_tr[:-HELD_OUT], x_te, y_te)
    return rc.Setup(data, epochs=epochs, finetune=finetune), held_out


def pretrain(setup: rc.Setup, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = DigitsCNN(width=32)
    rc.train(model, setup, epochs, setup.lr, perturb=rc.adversary(model), seed=seed)
    return model


def run_one(
    method: str,
    ratio: float,
    attack: str,
    seed: int,
    dense: nn.Module,
    setup: rc.Setup,
    held_out: tuple[torch.Tensor, torch.Tensor],
    ensemble: bool,
) -> dict[str, Any]:
    model = copy.deepcopy(dense)
    torch.manual_seed(seed)
    guards: list[OverfitGuard] = []
    per_epoch = -(-len(setup.data[1]) // 64)

    def watch(atmc: Any, opt: torch.optim.Optimizer) -> Callable[[], Any] | None:
        if attack == "pgd7":
            return None
        guards.append(OverfitGuard(atmc, held_out, optimizer=opt, every=per_epoch))
        return guards[-1].step

    started, cpu_started = time.perf_counter(), time.process_time()
    if method == "TP + ATMC (wrap)":
        report = rc.tp_with_atmc(model, setup, ratio, seed, ATTACKS[attack], watch)
        deployable = model
    else:
        bits = int(method.split()[1].split("-")[0])
        report = rc.atmc_training(
            model, setup, ratio * 32 / bits, bits, True, seed, ATTACKS[attack], watch
        )
        deployable = rc.merge_factors(model)
    train_seconds = time.perf_counter() - started
    train_cpu_seconds = time.process_time() - cpu_started
    x_te, y_te = setup.data[2], setup.data[3]
    clean, pgd20 = rc.pgd20(deployable, x_te, y_te)
    record: dict[str, Any] = {
        "method": method,
        "target_ratio": ratio,
        "attack": attack,
        "seed": seed,
        "size_ratio": report.size_ratio,
        "clean": clean,
        "pgd20": pgd20,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "threads": torch.get_num_threads(),
        "passes_per_step": PASSES[attack],
        "guard": guards[0].summary() if guards else None,
    }
    if ensemble:
        ev = evaluate(deployable, (x_te, y_te), eps=rc.EPS, preset="standard", cascade=True)
        record["ensemble"] = ev.robust
        record["per_attack"] = ev.per_attack
        record["flags"] = ev.flags
    record["seconds"] = time.perf_counter() - started
    return record


def planned(
    seeds: list[int], methods: tuple[str, ...] = METHODS, ratios: tuple[float, ...] = RATIOS
) -> Iterator[tuple[str, float, str, int]]:
    """Seed-major, so a partial run already holds every row of the first seeds."""
    for seed in seeds:
        for method in methods:
            for ratio in ratios:
                for attack in ATTACKS:
                    yield method, ratio, attack, seed


def key(method: str, ratio: float, attack: str, seed: int) -> str:
    return f"{method}|{ratio}|{attack}|{seed}"


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread per (method, ratio, attack); time ratios against the PGD-7 run of the
    same method, ratio and seed."""
    pgd = {(r["method"], r["target_ratio"], r["seed"]): r for r in runs if r["attack"] == "pgd7"}
    rows = []
    for method in METHODS:
        for ratio in sorted({r["target_ratio"] for r in runs}, reverse=True):
            for attack in ATTACKS:
                group = [
                    r
                    for r in runs
                    if (r["method"], r["target_ratio"], r["attack"]) == (method, ratio, attack)
                ]
                if not group:
                    continue
                ratios = [
                    _train_cost(r) / _train_cost(pgd[(method, ratio, r["seed"])])
                    for r in group
                    if (method, ratio, r["seed"]) in pgd
                ]
                rows.append(
                    {
                        "method": method,
                        "target_ratio": ratio,
                        "attack": attack,
                        "seeds": len(group),
                        **{k: _stats([r[k] for r in group if k in r]) for k in _MEASURED},
                        # wall clocks only where the process ran unhindered (see _ran_alone)
                        "train_seconds": _stats(
                            [r["train_seconds"] for r in group if _ran_alone(r)]
                        ),
                        "time_ratio": _stats(ratios),
                        "passes_per_step": PASSES[attack],
                        "guard_fired": sum(bool(r["guard"] and r["guard"]["fired"]) for r in group),
                        "guard_seconds": _stats(
                            [r["guard"]["seconds"] for r in group if r["guard"] and _ran_alone(r)]
                        ),
                    }
                )
    return rows


_MEASURED = ("ensemble", "clean", "pgd20", "train_cpu_seconds", "size_ratio")


def _ran_alone(run: dict[str, Any]) -> bool:
    """Whether a run's wall clocks (training and guard seconds) mean something: always for a
    multi-threaded run; for a single-threaded one, when its training wall time is within 1.5x
    its CPU time (a process stopped or starved for a while, by a paused benchmark or a test
    suite sharing the machine, is far above it). Its CPU time and figures stay valid."""
    return float(run["train_seconds"]) <= 1.5 * _train_cost(run)


def _train_cost(run: dict[str, Any]) -> float:
    """Training CPU seconds of one single-threaded run (immune to other processes sharing the
    machine and to a paused process), else its wall seconds."""
    if run.get("threads") == 1 and "train_cpu_seconds" in run:
        return float(run["train_cpu_seconds"])
    return float(run["train_seconds"])


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def _pm(stat: dict[str, float] | None, digits: int = 3) -> str:
    if stat is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Digits CNN, l_inf eps {rc.EPS}; {meta['pretrain_epochs']} epochs of PGD-7 "
        f"pre-training per seed, then {meta['epochs']} epochs per row; {meta['machine']}; "
        f"{meta['wall_seconds']:.0f} s summed over the {meta['runs']} rows (training and "
        "evaluation, pre-training not counted; workers running at once each count). "
        "Ensemble: worst case of the standard preset (PGD-20 x5, APGD-CE, APGD-DLR x5, "
        "APGD-T, FAB-T, Square 5000) as a "
        "cascade. Time ratio: training CPU seconds of a single-threaded process (wall seconds "
        "otherwise) / the PGD-7 row's (same method, ratio, seed, same process). Train s and guard "
        "s are wall clocks, left out for a single-threaded run whose wall time exceeds 1.5x its "
        "CPU time (stopped or starved a while). Mean ± std over seeds.",
        "",
        "| method | ratio | training attack | passes/step | ensemble | clean | PGD-20 | "
        "train s | train CPU s | time ratio | guard fired | guard s | seeds |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['target_ratio']:g} | {r['attack']} | {r['passes_per_step']} "
            f"| {_pm(r['ensemble'])} | {_pm(r['clean'])} | {_pm(r['pgd20'])} "
            f"| {_pm(r['train_seconds'], 0)} | {_pm(r.get('train_cpu_seconds'), 0)} "
            f"| {_pm(r['time_ratio'], 2)} "
            f"| {r['guard_fired']}/{r['seeds'] if r['attack'] != 'pgd7' else 0} "
            f"| {_pm(r['guard_seconds'], 1)} | {r['seeds']} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Robust accuracy (ensemble) against training time, one marker per training attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"pgd7": "o", "ffgsm": "s", "nfgsm": "^"}
    colors = plt.get_cmap("tab10")
    configs = sorted({(r["method"], r["target_ratio"]) for r in rows})
    for i, (method, ratio) in enumerate(configs):
        group = [r for r in rows if (r["method"], r["target_ratio"]) == (method, ratio)]
        for r in group:
            cost = r["train_cpu_seconds"] or r["train_seconds"]
            if r["ensemble"] is None or cost is None:
                continue
            ax.errorbar(
                cost["mean"],
                r["ensemble"]["mean"],
                yerr=r["ensemble"]["std"],
                marker=markers[r["attack"]],
                color=colors(i),
                linestyle="none",
                label=f"{method} {ratio:g}" if r["attack"] == "pgd7" else None,
            )
    for attack, marker in markers.items():
        ax.plot([], [], marker=marker, color="gray", linestyle="none", label=attack)
    ax.set_xlabel("training CPU seconds, one thread (mean over seeds)")
    ax.set_ylabel("robust accuracy (ensemble worst case)")
    ax.set_title("Single-step vs PGD-7 training inside ATMC (digits, eps 0.1)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pretrain-epochs", type=int, default=30)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--finetune", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--resume", action="store_true", help="skip runs already in the runs file")
    p.add_argument("--smoke", action="store_true", help="tiny schedule, results to /tmp")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--summarize", action="store_true", help="only rewrite the summary from the runs file"
    )
    args = p.parse_args()
    if args.smoke:
        args.seeds, args.pretrain_epochs, args.epochs, args.finetune = [0], 1, 2, 1
        args.out = args.out or Path("/tmp/atmc-fast-robust-compression-smoke")
    out: Path = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    runs_path = out / f"{NAME}.runs.jsonl"
    if not args.resume and not args.summarize and runs_path.exists():
        runs_path.unlink()
    done = {key(r["method"], r["target_ratio"], r["attack"], r["seed"]) for r in _read(runs_path)}
    setup, held_out = setup_for(args.epochs, args.finetune)
    dense: dict[int, nn.Module] = {}
    todo = [] if args.summarize else list(planned(args.seeds, args.methods, args.ratios))
    for method, ratio, attack, seed in todo:
        if key(method, ratio, attack, seed) in done:
            continue
        if seed not in dense:
            log.info("seed %d: PGD-7 pre-training (%d epochs)", seed, args.pretrain_epochs)
            dense = {seed: pretrain(setup, args.pretrain_epochs, seed)}
        record = run_one(
            method, ratio, attack, seed, dense[seed], setup, held_out, ensemble=not args.smoke
        )
        with runs_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        log.info(
            "%-18s %-6g %-6s seed %d: ensemble %s clean %.3f, train %.0f s, guard %s",
            method,
            ratio,
            attack,
            seed,
            f"{record.get('ensemble', float('nan')):.3f}",
            record["clean"],
            record["train_seconds"],
            "fired" if record["guard"] and record["guard"]["fired"] else "quiet",
        )
    runs = _read(runs_path)
    rows = summarize(runs)
    meta = {
        "machine": f"{cpu_model()}, {_threads(runs, args.threads)}, torch {torch.__version__}",
        "pretrain_epochs": args.pretrain_epochs,
        "epochs": args.epochs,
        "finetune": args.finetune,
        "seeds": sorted({int(r["seed"]) for r in runs}),  # the seeds with rows, not those asked
        "runs": len(runs),
        "wall_seconds": sum(r["seconds"] for r in runs),  # summed over rows
        "date": time.strftime("%Y-%m-%d"),
    }
    (out / f"{NAME}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (out / f"{NAME}.md").write_text(markdown(rows, meta))
    plot(rows, out / f"{NAME}.png")
    log.info("wrote %s", out / f"{NAME}.md")


def _threads(runs: list[dict[str, Any]], default: int) -> str:
    counts = sorted({int(r.get("threads", default)) for r in runs}) or [default]
    per = "/".join(str(c) for c in counts)
    return f"{per} thread{'s' if counts != [1] else ''} per process"


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    main()
