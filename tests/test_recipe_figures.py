"""benchmarks/recipe_figures.py: the README tables are rebuilt from a real run folder."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from atmc_plugin.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "recipe_figures.py"


@pytest.fixture(scope="module")
def figures_module(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("recipe_figures", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_tables_come_from_the_run_and_are_spliced_between_markers(tmp_path, figures_module):
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "tests" / "recipes" / "tiny_tp.toml"), "--out", str(out)]) == 0
    row = figures_module.figures("digits_tp_inc", out, 12.0, 1)
    table = figures_module.default_table(row)
    assert f"| {row['compressed']['clean']:.4f} |" in table.splitlines()[3].replace(
        "compressed, shipped | ", "| "
    )
    assert "12 s wall" in table
    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- default-recipe:begin -->\nstale\n<!-- default-recipe:end -->\nend\n"
    )
    figures_module.splice(readme, "default-recipe", table)
    text = readme.read_text()
    assert "stale" not in text and table in text and text.endswith("end\n")
    rows = figures_module.recipes_table({"digits_tp_inc": row})
    assert "`digits_tp_inc.toml` (default)" in rows
    assert f"({row['date']}, {row['cpu']}, OMP_NUM_THREADS=1," in rows
    older = {**row, "cpu": None, "machine": "x86_64 Linux, 2 threads"}
    mixed = figures_module.recipes_table({"digits_tp_inc": row, "digits_tp": older})
    assert "on different machines" in mixed and f"`digits_tp_inc` on {row['cpu']}" in mixed
    assert "`digits_tp` on x86_64 Linux, 2 threads (CPU model not recorded)" in mixed
    with pytest.raises(SystemExit, match="no <!-- recipes:begin -->"):
        figures_module.splice(readme, "recipes", rows)
