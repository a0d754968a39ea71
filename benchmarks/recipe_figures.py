"""The recipes' expected figures, from real runs, into the READMEs (so they cannot go stale).

::

    python benchmarks/recipe_figures.py --run digits_tp_inc digits_tp digits_mlp   # run them
    python benchmarks/recipe_figures.py --splice                                    # READMEs

``--run`` runs each named recipe of ``examples/recipes/`` with ``atmc run`` in a fresh process
into ``runs/recipe-figures/<name>/`` (``--runs``; a recipe whose folder already holds
``results.json`` is skipped unless ``--rerun``; run it from a frozen copy of the tree, a git
worktree, as every benchmark), times the whole process, and records the figures in
``benchmarks/results/recipes.json``. ``--splice`` rewrites the table of
``examples/README.md`` between ``<!-- recipes:begin -->`` and ``<!-- recipes:end -->`` and the
default recipe's table of ``README.md`` between ``<!-- default-recipe:begin -->`` and
``<!-- default-recipe:end -->`` from that file. Progress goes to the log.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = RESULTS / "recipes.json"
DEFAULT = "digits_tp_inc"
log = logging.getLogger("recipe_figures")


def run_recipe(name: str, out: Path, threads: int) -> dict[str, Any]:
    """Run one recipe in a fresh process and read its figures."""
    recipe = ROOT / "examples" / "recipes" / f"{name}.toml"
    if out.exists():
        shutil.rmtree(out)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "atmc_plugin", "-q", "run", str(recipe), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return figures(name, out, wall, threads)


def figures(name: str, run: Path, wall: float | None, threads: int) -> dict[str, Any]:
    """The table's figures of one finished run folder."""
    results = json.loads((run / "results.json").read_text())
    info = json.loads((run / "run.json").read_text())
    ev, size = results["evaluation"], results["size"]
    storage = size.get("storage") or {}
    return {
        "recipe": name,
        "dense": ev["dense"],
        "compressed": ev["compressed"],
        "size_ratio": size.get("size_ratio"),
        "storage_ratio": storage.get("ratio_vs_dense"),
        "storage_bytes": storage.get("total_bytes"),
        "dense_state_bytes": size.get("dense_state_bytes"),
        "params": [size.get("params"), size.get("dense_params")],
        "macs": [size.get("macs"), size.get("dense_macs")],
        "wall_seconds": wall,
        "train_seconds": results.get("train_seconds"),
        "evaluation_seconds": results.get("evaluation_seconds"),
        "threads": threads,
        "machine": info.get("machine"),
        "cpu": cpu_model(),
        "versions": info.get("versions"),
        "date": datetime.date.today().isoformat(),
        "platform": platform.platform(),
    }


def _f(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _structure(row: dict[str, Any]) -> str:
    (params, dense_params), (macs, dense_macs) = row["params"], row["macs"]
    if params == dense_params and macs == dense_macs:
        return "dense structure"
    return f"{params:,} / {dense_params:,}, {macs:,} / {dense_macs:,}"


def recipes_table(rows: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| recipe | dense clean / worst case | compressed clean / worst case | size ratio "
        "(storage) | params, MACs | wall time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        d, c = r["dense"], r["compressed"]
        storage = f" ({r['storage_ratio']:.3f})" if r.get("storage_ratio") else ""
        default = " (default)" if name == DEFAULT else ""
        lines.append(
            f"| `{name}.toml`{default} | {_f(d['clean'])} / {_f(d['robust'])} | "
            f"{_f(c['clean'])} / {_f(c['robust'])} | {r['size_ratio']:.3g}{storage} | "
            f"{_structure(r)} | {r['wall_seconds']:.0f} s |"
        )
    groups: dict[tuple[str, str, int], list[str]] = {}
    for name, r in rows.items():
        groups.setdefault((_where(r), r["date"], r["threads"]), []).append(f"`{name}`")
    if len(groups) == 1:
        ((where, date, threads),) = groups
        run_on = f"({date}, {where}, OMP_NUM_THREADS={threads}, recipes run one after the other)"
    else:
        run_on = "on different machines, so wall times compare only within one: " + "; ".join(
            f"{', '.join(names)} on {where} ({date}, OMP_NUM_THREADS={threads})"
            for (where, date, threads), names in groups.items()
        )
    lines += [
        "",
        f"Generated by `python benchmarks/recipe_figures.py` from one run each {run_on}; wall "
        "time is the whole `atmc run` process.",
    ]
    return "\n".join(lines)


def _where(row: dict[str, Any]) -> str:
    """The CPU a row ran on, or what older rows recorded of the machine."""
    return row.get("cpu") or f"{row['machine']} (CPU model not recorded)"


def default_table(row: dict[str, Any]) -> str:
    attacks = list(row["dense"]["per_attack"])
    head = ["model", "clean", *attacks, "worst case", "size ratio", "params", "MACs"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    (params, dense_params), (macs, dense_macs) = row["params"], row["macs"]
    for label, key, ratio, p, m in (
        ("dense (after pre-training)", "dense", "1", dense_params, dense_macs),
        ("compressed, shipped", "compressed", f"{row['size_ratio']:.3g}", params, macs),
    ):
        ev = row[key]
        cells = [label, _f(ev["clean"]), *(_f(ev["per_attack"][a]) for a in attacks)]
        cells += [_f(ev["robust"]), ratio, f"{p:,}", f"{m:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    if row["dense"].get("cascade"):
        from atmc_plugin.app.report_md import CASCADE_NOTE

        lines += ["", CASCADE_NOTE]
    lines += [
        "",
        f"Seed 0, one run, {_where(row)}, OMP_NUM_THREADS={row['threads']}, "
        f"{row['wall_seconds']:.0f} s wall ({row['date']}; `python benchmarks/recipe_figures.py`). "
        f"Storage-honest size: {row['storage_bytes']:,} bytes against "
        f"{row['dense_state_bytes']:,} for the dense model ({row['storage_ratio']:.3f}).",
    ]
    return "\n".join(lines)


EXAMPLES: dict[str, list[list[str]]] = {
    # the README's Python examples: each list of arguments is one run; their tables are merged
    "digits_atmc": [[]],
    "digits_tp_atmc": [[], ["--no-attack"]],
    "digits_inc_atmc": [["--latency"]],
}


def run_example(name: str, threads: int) -> dict[str, Any]:
    """Run one Python example (each of its argument lists) and keep its Markdown table."""
    table: list[str] = []
    facts: list[str] = []
    wall: list[float] = []
    for extra in EXAMPLES[name]:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples" / f"{name}.py"), *extra],
            env={**os.environ, "OMP_NUM_THREADS": str(threads)},
            capture_output=True,
            text=True,
            check=False,
        )
        wall.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"{name} {extra} failed:\n{done.stderr[-3000:]}")
        lines = (done.stdout + done.stderr).splitlines()
        rows = [line for line in lines if line.startswith("|")]
        table += rows if not table else rows[2:]  # one header for the merged table
        facts += [line for line in lines if line.startswith("- ")]  # facts under the table
    return {
        "example": name,
        "table": table,
        "facts": facts,
        "wall_seconds": wall,
        "threads": threads,
        "machine": cpu_model(),
        "date": datetime.date.today().isoformat(),
    }


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores"


def example_text(row: dict[str, Any]) -> str:
    runs = " and ".join(f"{w:.0f} s" for w in row["wall_seconds"])
    facts = row.get("facts") or []
    return "\n".join(
        [
            *row["table"],
            "",
            *([*facts, ""] if facts else []),
            f"One run each, seed 0, {row['machine'] + ', ' if row.get('machine') else ''}"
            f"OMP_NUM_THREADS={row['threads']}, {runs} wall "
            f"({row['date']}; `python benchmarks/recipe_figures.py --examples {row['example']}`).",
        ]
    )


def splice(path: Path, marker: str, text: str) -> None:
    content = path.read_text()
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    if begin not in content or end not in content:
        raise SystemExit(f"{path} has no {begin} ... {end} markers.")
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", nargs="+", default=[], metavar="RECIPE", help="recipes to run")
    p.add_argument("--rerun", action="store_true", help="run recipes that already have results")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--runs",
        type=Path,
        default=ROOT / "runs" / "recipe-figures",
        help="run folders (not kept in git)",
    )
    p.add_argument(
        "--examples", nargs="+", default=[], choices=sorted(EXAMPLES), help="examples to run"
    )
    p.add_argument("--splice", action="store_true", help="rewrite the README tables")
    args = p.parse_args()
    rows = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    for name in args.run:
        out = args.runs / name
        if name in rows and (out / "results.json").exists() and not args.rerun:
            log.info("%s: kept (results exist; --rerun to run again)", name)
            continue
        log.info("%s: running", name)
        rows[name] = run_recipe(name, out, args.threads)
        FIGURES.write_text(json.dumps(rows, indent=1) + "\n")  # after each recipe: resumable
        log.info("%s: done in %.0f s", name, rows[name]["wall_seconds"])
    examples = rows.setdefault("examples", {})
    for name in args.examples:
        log.info("example %s: running", name)
        examples[name] = run_example(name, args.threads)
        FIGURES.write_text(json.dumps(rows, indent=1) + "\n")
        log.info("example %s: done", name)
    recipes = {k: v for k, v in rows.items() if k != "examples"}
    if args.splice:
        for name, row in examples.items():
            splice(ROOT / "README.md", f"example:{name}", example_text(row))
        rows = recipes
        if not rows:
            raise SystemExit(f"{FIGURES} holds no runs; run some with --run first.")
        splice(ROOT / "examples" / "README.md", "recipes", recipes_table(rows))
        if DEFAULT in rows:
            splice(ROOT / "README.md", "default-recipe", default_table(rows[DEFAULT]))


if __name__ == "__main__":
    main()
