"""``report.md`` and PNG plots of a run folder, from ``metrics.jsonl`` and ``results.json``.

``atmc report RUN_DIR`` calls :func:`write_report`; so does the end of ``atmc run``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ATMCError, InputError
from ..io import write_text_atomically
from .rundir import RunDir, read_json


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 else f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


CASCADE_NOTE = (
    "Attacks ran as a cascade: each only on the points every earlier one missed, so the "
    "per-attack columns are cumulative and the last one is the worst case."
)


def _evaluation_table(results: dict[str, Any]) -> list[str]:
    ev = results["evaluation"]
    attacks = list(ev["dense"]["per_attack"])
    size = results["size"]
    lat = results.get("latency_ms", {})
    head = ["model", "clean", *attacks, "worst case", "size ratio", "params", "MACs", "latency"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    rows = (
        (
            "dense (after pre-training)",
            "dense",
            1.0,
            size.get("dense_params"),
            size.get("dense_macs"),
        ),
        (
            "compressed" + (" (INC int8)" if results.get("int8") else ""),
            "compressed",
            size.get("size_ratio"),
            size.get("params"),
            size.get("macs"),
        ),
    )
    for label, key, ratio, params, macs in rows:
        r = ev[key]
        cells = [label, _fmt(r["clean"])]
        cells += [_fmt(r["per_attack"][a]) for a in attacks]
        cells += [_fmt(r["robust"]), _fmt(ratio), _fmt(params), _fmt(macs)]
        cells.append(f"{lat[key]:.3f} ms" if key in lat else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _latency_note(results: dict[str, Any]) -> str:
    batch = results["latency_batch"]
    if results.get("latency_kind") == "compiled":
        eager = results.get("latency_eager_ms", {})
        plain = ", ".join(f"{k} {v:.3f} ms" for k, v in eager.items())
        return (
            f"Latency: median of 30 forward passes of a batch of {batch}, compiled with "
            f"`torch.compile` (inductor, `freezing=True`: int8 graphs run oneDNN int8 kernels), "
            f"as deployed. Eager, for comparison: {plain}."
        )
    reason = results.get("latency_compile_error")
    why = f" (torch.compile failed here: {reason})" if reason else " (compiled_latency = false)"
    return (
        f"Latency: median of 30 eager forward passes of a batch of {batch}{why}. An INC int8 "
        "graph runs reference quantize/dequantize ops in eager mode and is slower than fp32 "
        "there; compiled (inductor `freezing=True`) it runs int8 kernels."
    )


def _eval_seconds(results: dict[str, Any]) -> str:
    seconds = results.get("evaluation_seconds") or {}
    if not seconds:
        return ""  # a run written before evaluation times were recorded
    parts = ", ".join(f"{name} {v:.0f} s" for name, v in seconds.items())
    return f"; evaluation took {parts}"


def _artifact_lines(results: dict[str, Any]) -> list[str]:
    """The shipped files and their latency once loaded (``RUN_DIR/export``)."""
    devices = results.get("devices") or {}
    where = ", ".join(f"{name} on {device}" for name, device in devices.items())
    lines = [f"Models ran: {where}.", ""] if where else []
    artifacts = results.get("artifacts") or {}
    if "error" in artifacts:
        return [*lines, f"The pt2 files could not be written: {artifacts['error']}", ""]
    files = artifacts.get("files") or []
    if not files:
        return lines
    batches = artifacts.get("batches") or []
    head = ["file", "bytes", "batch"]
    for kind in ("eager", "compiled"):
        head += [f"{kind} b={b} (ms)" for b in batches]
    rows = [
        "## Shipped files (`RUN_DIR/export`, loaded as a server loads them, on the CPU)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * 3 + "---:|" * (2 * len(batches)),
    ]
    errors = []
    for f in files:
        lat = f.get("latency") or {}
        cells = [
            f"`{Path(f['path']).name}`",
            f"{f['bytes']:,}",
            "any" if f["dynamic_batch"] else "fixed",
        ]
        for kind in ("eager", "compiled"):
            times = {int(k): v for k, v in (lat.get(kind) or {}).items()}
            cells += [f"{times[b]:.3f}" if b in times else "-" for b in batches]
        rows.append("| " + " | ".join(cells) + " |")
        errors += [
            f"- `{Path(f['path']).name}` {k}: {v}" for k, v in (lat.get("errors") or {}).items()
        ]
    rows.append("")
    if errors:
        rows += ["Failures (a compiled program called at a new batch size, ...):", "", *errors, ""]
    rows += [
        "Load with `torch.export.load(path).module()` (int8: `import "
        "torch.ao.quantization.fx._decomposed` first); `atmc export RUN_DIR --format onnx inc` "
        "adds ONNX and INC's own format.",
        "",
    ]
    return [*lines, *rows]


def render(run: RunDir, info: dict[str, Any], results: dict[str, Any]) -> str:
    """The Markdown report."""
    ev = results["evaluation"]["compressed"]
    size = results["size"]
    lines = [
        f"# atmc run: {results['recipe']}",
        "",
        f"Recipe `{info.get('recipe')}` (digest {info.get('recipe_digest')}), seed "
        f"{info.get('seed')}, device {info.get('device')}, {info.get('machine')}. "
        f"Training took {results['train_seconds']:.0f} s{_eval_seconds(results)}.",
        "",
        f"## Accuracy and robustness (l_inf eps {ev['eps']:g}, preset {ev['preset']}, "
        f"n = {ev['n']})",
        "",
        *_evaluation_table(results),
        "",
        *([CASCADE_NOTE, ""] if ev.get("cascade") else []),
        _latency_note(results),
        "",
        *_artifact_lines(results),
    ]
    flags = sorted({f for r in results["evaluation"].values() for f in r.get("flags", [])})
    if flags:
        lines += [f"**Robustness warnings:** {', '.join(flags)} (see docs/robustness.md).", ""]
    storage = size.get("storage")
    lines += ["## Size", ""]
    lines.append(
        f"- size ratio (non-zeros x bits / dense 32-bit conv/linear weights): "
        f"{_fmt(size.get('size_ratio'))}"
    )
    if storage:
        lines.append(
            f"- storage-honest: {storage['total_bytes']:,} bytes against "
            f"{size['dense_state_bytes']:,} for the dense model (ratio "
            f"{_fmt(storage['ratio_vs_dense'])}; codes, indices, codebooks, biases, BatchNorm)"
        )
    if "compact_file_bytes" in size:
        lines.append(f"- `model.safetensors`: {size['compact_file_bytes']:,} bytes")
    lines += ["", "## Plots", "", "![training](training.png)", "", "![size](accuracy_vs_size.png)"]
    return "\n".join(lines) + "\n"


def plot_training(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r for r in records if r.get("kind") == "epoch"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = [r["global_epoch"] for r in epochs]
    ax1.plot(x, [r["loss"] for r in epochs], label="training loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax2.plot(x, [r["train_acc"] for r in epochs], label="train (clean)")
    adv = [(r["global_epoch"], r["train_adv_acc"]) for r in epochs if r.get("train_adv_acc")]
    if adv:
        ax2.plot(*zip(*adv, strict=True), label="train (adversarial)")
    ax2.plot(x, [r["test_acc"] for r in epochs], label="test (clean)")
    robust = [(r["global_epoch"], r["test_robust"]) for r in epochs if "test_robust" in r]
    if robust:
        ax2.plot(*zip(*robust, strict=True), label="test (robust, PGD-20 x2, 128 points)")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy")
    for ax in (ax1, ax2):
        seen = set()
        for r in epochs:
            if r["epoch"] == 1 and r["stage"] not in seen:
                seen.add(r["stage"])
                ax.axvline(r["global_epoch"] - 0.5, color="grey", linestyle=":", linewidth=0.8)
                ax.text(r["global_epoch"], ax.get_ylim()[1], r["stage"], fontsize=7, va="top")
        ax.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_size(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev, size = results["evaluation"], results["size"]
    points = {"dense": 1.0, "compressed": size.get("size_ratio") or 1.0}
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, marker in (("clean", "o"), ("robust", "s")):
        xs = [points[m] for m in ("dense", "compressed")]
        ys = [ev[m][key] for m in ("dense", "compressed")]
        ax.plot(xs, ys, marker=marker, label="clean" if key == "clean" else "robust (worst case)")
    for name, ratio in points.items():
        ax.annotate(
            name, (ratio, ev[name]["clean"]), fontsize=8, xytext=(4, 4), textcoords="offset points"
        )
    ax.set_xscale("log")
    ax.set_xlabel("size ratio (compressed bits / dense 32-bit bits)")
    ax.set_ylabel(f"accuracy (eps {ev['compressed']['eps']:g})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run: RunDir) -> Path:
    """(Re)write ``report.md``, ``training.png`` and ``accuracy_vs_size.png``.

    :raises ATMCError: the run has not finished (no ``results.json``).
    """
    if not run.results.exists():
        raise ATMCError(
            f"{str(run.root)!r} has no results.json: the run has not finished; continue it with "
            "`atmc run RECIPE --out RUN_DIR --resume`."
        )
    results = read_json(run.results)
    info_path = run.root / "run.json"
    info = read_json(info_path) if info_path.exists() else {}
    try:
        plot_training(run.read_metrics(), run.root / "training.png")
        plot_size(results, run.root / "accuracy_vs_size.png")
        text = render(run, info, results)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise InputError(
            f"{str(run.root)!r}: results.json or metrics.jsonl lacks what the report needs "
            f"({type(exc).__name__}: {exc}); rerun the run or restore the files."
        ) from exc
    path = run.root / "report.md"
    write_text_atomically(text, path)
    return path
